"""Specification of :class:`pyro_autoformer.bayesian.BayesianAutoformer`."""

import collections
import dataclasses
import math
import re

import numpy as np
import pyro
import pytest
import torch
from pyro.poutine.messenger import Messenger

from pyro_autoformer.autoformer import Autoformer, AutoformerConfig
from pyro_autoformer.bayesian import BayesianAutoformer, BayesianConfig
from pyro_autoformer.guides.mean_field import MeanFieldGuide
from pyro_autoformer.tuning.elbo import BetaELBO

# Weights an encoder layer adds: q/k/v/out projections + conv1 + conv2.
SITES_PER_ENCODER_LAYER = 6
# A decoder layer: 4 (self) + 4 (cross) + conv1 + conv2 + trend projection.
SITES_PER_DECODER_LAYER = 11
# Outside the layer stacks: value and time embeddings of encoder and decoder (4)
# and the final projection (1).
OTHER_SITES = 5


def tiny_config(**overrides):
    values = dict(
        enc_in=3,
        dec_in=3,
        c_out=3,
        d_model=16,
        n_heads=2,
        d_ff=16,
        seq_len=24,
        label_len=12,
        pred_len=12,
        dropout=0.0,
    )
    values.update(overrides)
    return AutoformerConfig(**values)


def tiny_inputs(config, batch=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    marks = config.n_time_features

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    x_enc = randn(batch, config.seq_len, config.enc_in)
    x_mark_enc = randn(batch, config.seq_len, marks)
    x_dec = randn(batch, config.dec_len, config.dec_in)
    x_mark_dec = randn(batch, config.dec_len, marks)
    y = randn(batch, config.pred_len, config.c_out)
    return (x_enc, x_mark_enc, x_dec, x_mark_dec), y


class SampleCounter(Messenger):
    """Counts the ``pyro.sample`` statements of each name."""

    def __init__(self):
        super().__init__()
        self.counts = collections.Counter()

    def _pyro_sample(self, msg):
        self.counts[msg["name"]] += 1


# ------------------------------------------------------------------ site names
@pytest.mark.parametrize("e_layers, d_layers", [(1, 1), (2, 1), (3, 2)])
def test_site_count_grows_linearly_with_the_number_of_layers(e_layers, d_layers):
    model = BayesianAutoformer(tiny_config(e_layers=e_layers, d_layers=d_layers))

    expected = (
        OTHER_SITES
        + SITES_PER_ENCODER_LAYER * e_layers
        + SITES_PER_DECODER_LAYER * d_layers
    )
    assert len(model.site_names) == expected
    assert len(model.latent_sites()) == expected


def test_site_names_are_unique_and_name_their_layer_index():
    model = BayesianAutoformer(tiny_config(e_layers=3, d_layers=2))
    names = model.site_names

    assert len(set(names)) == len(names)
    for prefix, layers, per_layer in (
        ("encoder.attn_layers.", 3, SITES_PER_ENCODER_LAYER),
        ("decoder.layers.", 2, SITES_PER_DECODER_LAYER),
    ):
        stacked = [n for n in names if n.startswith(prefix)]
        indices = collections.Counter(
            int(re.match(re.escape(prefix) + r"(\d+)\.", n).group(1)) for n in stacked
        )
        assert indices == {i: per_layer for i in range(layers)}
        # The same weight in two layers differs only by the index.
        assert f"{prefix}0.conv1.weight" in names
        assert f"{prefix}{layers - 1}.conv1.weight" in names


def test_weight_sites_lie_outside_the_data_plate_and_obs_inside():
    config = tiny_config()
    model = BayesianAutoformer(config, dataset_size=50)
    inputs, y = tiny_inputs(config, batch=5)

    trace = pyro.poutine.trace(model).get_trace(*inputs, y)

    for name in model.site_names:
        assert trace.nodes[name]["cond_indep_stack"] == ()
    (frame,) = trace.nodes["obs"]["cond_indep_stack"]
    assert frame.name == "data" and frame.size == 5 and frame.full_size == 50
    assert trace.nodes["obs"]["scale"] == pytest.approx(50 / 5)


def test_each_weight_site_is_sampled_once_per_forward():
    config = tiny_config()
    model = BayesianAutoformer(config)
    inputs, y = tiny_inputs(config)
    counter = SampleCounter()

    with counter:
        model(*inputs, y)

    assert {n: counter.counts[n] for n in model.site_names} == {
        n: 1 for n in model.site_names
    }
    assert counter.counts["obs"] == 1


# ----------------------------------------------------------- layer selection
def test_no_bayesian_layers_reproduces_the_deterministic_forward_exactly():
    config = tiny_config()
    torch.manual_seed(3)
    deterministic = Autoformer(config).eval()
    model = BayesianAutoformer(config, BayesianConfig(bayesian_layers="none")).eval()
    model.load_deterministic_state(deterministic.state_dict())
    inputs, _ = tiny_inputs(config)

    assert model.site_names == ()
    assert model.net.state_dict().keys() == deterministic.state_dict().keys()
    with torch.no_grad():
        expected = deterministic(*inputs)
        assert torch.equal(model(*inputs), expected)


def test_sampled_weights_equal_to_the_deterministic_weights_give_its_forward():
    config = tiny_config()
    torch.manual_seed(4)
    deterministic = Autoformer(config).eval()
    model = BayesianAutoformer(config).eval()
    state = deterministic.state_dict()
    model.load_deterministic_state(state)
    _, weights = model.split_state_dict(state)
    inputs, _ = tiny_inputs(config)

    conditioned = pyro.poutine.condition(model, data=weights)
    with torch.no_grad():
        torch.testing.assert_close(
            conditioned(*inputs), deterministic(*inputs), rtol=0, atol=1e-6
        )


def test_group_selects_the_sites_of_that_group():
    config = tiny_config(e_layers=2, d_layers=1)

    encoder = BayesianAutoformer(config, BayesianConfig(bayesian_layers="encoder"))
    projection = BayesianAutoformer(
        config, BayesianConfig(bayesian_layers="projection")
    )
    embedding = BayesianAutoformer(config, BayesianConfig(bayesian_layers="embedding"))

    assert len(encoder.site_names) == 2 * SITES_PER_ENCODER_LAYER
    assert all(n.startswith("encoder.attn_layers.") for n in encoder.site_names)
    assert projection.site_names == ("decoder.projection.weight",)
    assert set(embedding.site_names) == {
        "enc_embedding.value_embedding.tokenConv.weight",
        "enc_embedding.temporal_embedding.embed.weight",
        "dec_embedding.value_embedding.tokenConv.weight",
        "dec_embedding.temporal_embedding.embed.weight",
    }
    assert set(encoder.site_groups.values()) == {"encoder"}


def test_patterns_and_lists_combine_groups_and_globs():
    config = tiny_config(e_layers=2)
    bayes = BayesianConfig(bayesian_layers="projection, encoder.*.conv1.*")

    model = BayesianAutoformer(config, bayes)

    assert set(model.site_names) == {
        "decoder.projection.weight",
        "encoder.attn_layers.0.conv1.weight",
        "encoder.attn_layers.1.conv1.weight",
    }
    listed = BayesianConfig(bayesian_layers=["projection", "encoder.*.conv1.*"])
    assert BayesianAutoformer(config, listed).site_names == model.site_names


def test_bayesian_biases_add_a_site_for_every_bias():
    config = tiny_config()
    bayes = BayesianConfig(bayesian_layers="projection", bayesian_biases=True)
    model = BayesianAutoformer(config, bayes)
    assert set(model.site_names) == {
        "decoder.projection.weight",
        "decoder.projection.bias",
    }


def test_an_unknown_group_names_the_valid_choices():
    with pytest.raises(ValueError) as error:
        BayesianAutoformer(tiny_config(), BayesianConfig(bayesian_layers="attention"))
    message = str(error.value)
    assert "'attention'" in message
    for choice in ("all", "none", "embedding", "encoder", "decoder", "projection"):
        assert choice in message


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prior_std": 0.0}, "prior_std"),
        ({"prior_scale": "xavier"}, "prior_scale"),
        ({"likelihood": "poisson"}, "likelihood"),
        ({"likelihood": "quantile", "quantiles": (0.5, 0.2)}, "increasing"),
        ({"bayesian_layers": ""}, "bayesian_layers"),
        ({"bayesian_layers": "all,encoder"}, "stand alone"),
    ],
)
def test_bayesian_config_refuses_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BayesianConfig(**kwargs)


def test_dataset_size_below_one_is_refused():
    with pytest.raises(ValueError, match="dataset_size"):
        BayesianAutoformer(tiny_config(), dataset_size=0)


# ---------------------------------------------------------------------- priors
def test_fan_in_prior_scale_is_prior_std_over_root_fan_in():
    config = tiny_config(d_model=16, d_ff=8, enc_in=3, dec_in=3, c_out=2)
    bayes = BayesianConfig(prior_std=0.5, prior_scale="fan_in")
    priors = BayesianAutoformer(config, bayes).latent_sites()

    expected_fan_in = {
        # Linear(d_model -> d_model): fan-in d_model.
        "encoder.attn_layers.0.attention.query_projection.weight": 16,
        # Conv1d(d_ff -> d_model, kernel 1): fan-in d_ff * 1.
        "encoder.attn_layers.0.conv2.weight": 8,
        # Conv1d(enc_in -> d_model, kernel 3): fan-in enc_in * 3.
        "enc_embedding.value_embedding.tokenConv.weight": 9,
        # Linear(4 hourly time features -> d_model).
        "enc_embedding.temporal_embedding.embed.weight": 4,
        # Trend projection Conv1d(d_model -> c_out, kernel 3): fan-in 48.
        "decoder.layers.0.projection.weight": 48,
    }
    for name, fan_in in expected_fan_in.items():
        scale = priors[name].base_dist.scale
        assert torch.allclose(scale, torch.tensor(0.5 / math.sqrt(fan_in))), name


def test_fixed_prior_scale_is_prior_std_for_every_site():
    model = BayesianAutoformer(tiny_config(), BayesianConfig(prior_std=0.3))
    for prior in model.latent_sites().values():
        assert torch.allclose(prior.base_dist.scale, torch.tensor(0.3))
        assert torch.all(prior.base_dist.loc == 0)


def test_priors_follow_dtype_conversion():
    model = BayesianAutoformer(tiny_config())
    assert "prior_scales" in dict(model.named_buffers())
    model.double()
    for prior in model.latent_sites().values():
        assert prior.base_dist.scale.dtype == torch.float64


def test_a_guide_built_for_a_float64_model_evaluates_the_elbo():
    config = tiny_config()
    model = BayesianAutoformer(config).double()
    inputs, y = tiny_inputs(config)
    guide = MeanFieldGuide(model)
    loss = BetaELBO().loss(model, guide, *(t.double() for t in inputs), y.double())
    assert math.isfinite(loss)


# ------------------------------------------------------ building and training
def _train(model, guide, inputs, y, steps, lr=0.01):
    svi = pyro.infer.SVI(
        model, guide, pyro.optim.Adam({"lr": lr}), pyro.infer.TraceMeanField_ELBO()
    )
    return [svi.step(*inputs, y) for _ in range(steps)]


def test_models_of_different_sizes_and_columns_build_and_train_in_one_process():
    small = tiny_config()
    wide = tiny_config(enc_in=5, dec_in=5, c_out=5, d_model=8, e_layers=1)
    model_a, model_b = BayesianAutoformer(small), BayesianAutoformer(wide)
    guide_a, guide_b = MeanFieldGuide(model_a), MeanFieldGuide(model_b)
    inputs_a, y_a = tiny_inputs(small)
    inputs_b, y_b = tiny_inputs(wide)

    losses = _train(model_a, guide_a, inputs_a, y_a, 2)
    losses += _train(model_b, guide_b, inputs_b, y_b, 2)
    snapshot_a = guide_a.loc.detach().clone()
    losses += _train(model_b, guide_b, inputs_b, y_b, 1)
    assert torch.equal(guide_a.loc.detach(), snapshot_a)

    pyro.clear_param_store()
    model_c = BayesianAutoformer(dataclasses.replace(small, d_model=32))
    losses += _train(model_c, MeanFieldGuide(model_c), inputs_a, y_a, 1)
    losses += _train(model_a, guide_a, inputs_a, y_a, 1)
    assert np.all(np.isfinite(losses))


def test_deterministic_parameters_are_kept_apart_per_model():
    config = tiny_config()
    model_a, model_b = BayesianAutoformer(config), BayesianAutoformer(config)
    inputs, y = tiny_inputs(config)
    guide_a = MeanFieldGuide(model_a)
    bias_b = model_b.net.decoder.projection.bias.detach().clone()

    _train(model_a, guide_a, inputs, y, 3, lr=0.1)

    assert torch.equal(model_b.net.decoder.projection.bias.detach(), bias_b)
    assert not torch.equal(model_a.net.decoder.projection.bias.detach(), bias_b)


def test_svi_on_etth1_windows_has_finite_decreasing_loss():
    data_module = pytest.importorskip("pyro_autoformer.data")
    data = data_module.load_data(
        data_module.DataConfig(seq_len=24, label_len=12, pred_len=12)
    )
    config = tiny_config(enc_in=data.enc_in, dec_in=data.enc_in, c_out=data.c_out)
    windows = [data.train[i] for i in range(0, 256, 16)]
    batch = [torch.stack([torch.as_tensor(w[k]) for w in windows]) for k in range(4)]
    inputs, y = data_module.prepare_batch(batch, 12, 12, data.c_out)
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    model = BayesianAutoformer(config, dataset_size=len(data.train))
    guide = MeanFieldGuide(model)

    losses = _train(model, guide, inputs, y, 30)

    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_beta_elbo_reads_the_models_kl_weight():
    config = tiny_config()
    model = BayesianAutoformer(config, dataset_size=10, kl_weight=0.25)
    guide = MeanFieldGuide(model)
    inputs, y = tiny_inputs(config)
    elbo = BetaELBO(beta=model)

    elbo.loss(model, guide, *inputs, y)

    assert elbo.last.beta == 0.25
    assert elbo.last.num_elements == 10 * config.pred_len * config.c_out
    kl = guide.kl_divergence().item()
    assert elbo.last.kl == pytest.approx(kl / elbo.last.num_elements, rel=1e-5)
