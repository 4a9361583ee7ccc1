"""Specifications of :class:`pyro_autoformer.autoformer.Autoformer` and its config."""

import dataclasses

import pytest
import torch

from pyro_autoformer.autoformer import (
    PARAMETER_GROUPS,
    Autoformer,
    AutoformerConfig,
    parameter_group,
)

N_MARKS = 4  # time features for freq="h"


def small_config(**overrides):
    sizes = dict(
        enc_in=3,
        dec_in=3,
        c_out=3,
        seq_len=48,
        label_len=24,
        pred_len=24,
        d_model=16,
        n_heads=2,
        e_layers=2,
        d_layers=1,
        d_ff=32,
        moving_avg=5,
        dropout=0.0,
        freq="h",
    )
    sizes.update(overrides)
    return AutoformerConfig(**sizes)


def random_inputs(config, batch=2, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)

    def draw(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype)

    dec_len = config.label_len + config.pred_len
    return (
        draw(batch, config.seq_len, config.enc_in),
        draw(batch, config.seq_len, N_MARKS),
        draw(batch, dec_len, config.dec_in),
        draw(batch, dec_len, N_MARKS),
    )


def zero_all_but_output_bias(model, bias):
    """Zero every weight that feeds the output; the forecast is then the trend
    initialisation (the level of the context) plus the projection bias."""
    with torch.no_grad():
        model.decoder.projection.weight.zero_()
        model.decoder.projection.bias.copy_(bias)
        for layer in model.decoder.layers:
            layer.projection.weight.zero_()


# Shapes --------------------------------------------------------------------------


@pytest.mark.parametrize("pred_len", [96, 336, 720])
@pytest.mark.parametrize(
    ("enc_in", "c_out"), [(7, 7), (1, 1), (7, 1)], ids=["M", "S", "MS"]
)
def test_output_shape_for_each_mode_and_horizon(enc_in, c_out, pred_len):
    config = small_config(enc_in=enc_in, dec_in=enc_in, c_out=c_out, pred_len=pred_len)
    with torch.no_grad():
        out = Autoformer(config)(*random_inputs(config))
    assert out.shape == (2, pred_len, c_out)


def test_paper_size_model_forecasts_720_steps_from_96():
    config = AutoformerConfig(enc_in=7, dec_in=7, c_out=7, pred_len=720)
    with torch.no_grad():
        out = Autoformer(config).eval()(*random_inputs(config, batch=1))
    assert out.shape == (1, 720, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("enc_in", "c_out"), [(7, 7), (7, 1)], ids=["M", "MS"])
def test_output_has_trailing_axis_of_n_outputs(enc_in, c_out):
    config = small_config(enc_in=enc_in, dec_in=enc_in, c_out=c_out, n_outputs=3)
    out = Autoformer(config)(*random_inputs(config))
    assert out.shape == (2, 24, c_out, 3)


def test_even_moving_average_window_runs():
    config = small_config(moving_avg=4)
    assert Autoformer(config)(*random_inputs(config)).shape == (2, 24, 3)


# Decoder initialisation ----------------------------------------------------------


def test_forecast_with_silenced_projections_is_mean_of_context():
    # Multivariate: every channel's forecast is its own mean over the context.
    config = small_config()
    model = Autoformer(config)
    zero_all_but_output_bias(model, torch.zeros(3))
    x_enc, *rest = random_inputs(config)
    expected = x_enc.mean(dim=1, keepdim=True).expand(-1, config.pred_len, -1)
    torch.testing.assert_close(model(x_enc, *rest), expected)


def test_ms_trend_comes_from_the_last_input_channel():
    config = small_config(enc_in=4, dec_in=4, c_out=1)
    model = Autoformer(config)
    zero_all_but_output_bias(model, torch.zeros(1))
    x_enc, *rest = random_inputs(config)
    x_enc[..., -1] += 10.0  # make the target channel's level stand out
    expected = x_enc[..., 3:].mean(dim=1, keepdim=True).expand(-1, config.pred_len, -1)
    torch.testing.assert_close(model(x_enc, *rest), expected)


def test_trend_is_added_to_each_of_the_n_outputs():
    # The projection's outputs are ordered channel-major: (c_out, n_outputs).
    config = small_config(enc_in=2, dec_in=2, c_out=2, n_outputs=3)
    model = Autoformer(config)
    bias = torch.tensor([-1.0, 0.0, 1.0, -2.0, 0.5, 2.0])
    zero_all_but_output_bias(model, bias)
    x_enc, *rest = random_inputs(config)
    level = x_enc.mean(dim=1)  # (batch, c_out)
    expected = level.view(2, 1, 2, 1) + bias.view(1, 1, 2, 3)
    out = model(x_enc, *rest)
    torch.testing.assert_close(out, expected.expand(-1, config.pred_len, -1, -1))


def test_values_of_x_dec_are_not_read():
    config = small_config()
    model = Autoformer(config)
    x_enc, x_mark_enc, x_dec, x_mark_dec = random_inputs(config)
    first = model(x_enc, x_mark_enc, x_dec, x_mark_dec)
    second = model(x_enc, x_mark_enc, torch.randn_like(x_dec), x_mark_dec)
    torch.testing.assert_close(first, second, rtol=0, atol=0)


# Train/eval and batch independence -----------------------------------------------


def test_train_and_eval_give_the_same_forecast_without_dropout():
    config = small_config()
    model = Autoformer(config).double()
    inputs = random_inputs(config, batch=4, dtype=torch.float64)
    train_out = model.train()(*inputs)
    eval_out = model.eval()(*inputs)
    torch.testing.assert_close(train_out, eval_out)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_forecast_of_a_sample_does_not_depend_on_its_batch(mode):
    config = small_config()
    model = Autoformer(config).double()
    getattr(model, mode)()
    inputs = random_inputs(config, batch=5, dtype=torch.float64)
    batched = model(*inputs)
    for i in range(5):
        alone = model(*(t[i : i + 1] for t in inputs))
        torch.testing.assert_close(batched[i : i + 1], alone)


def test_dropout_changes_training_forecasts_only():
    config = small_config(dropout=0.5)
    model = Autoformer(config)
    inputs = random_inputs(config)
    model.train()
    assert not torch.equal(model(*inputs), model(*inputs))
    model.eval()
    torch.testing.assert_close(model(*inputs), model(*inputs), rtol=0, atol=0)


# Gradients -----------------------------------------------------------------------


def test_every_parameter_receives_a_gradient():
    config = small_config(e_layers=2, d_layers=2, n_outputs=2)
    model = Autoformer(config)
    model(*random_inputs(config)).square().sum().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert parameter.grad.abs().sum() > 0, name


# Names and groups ----------------------------------------------------------------


def test_parameter_names_follow_the_reference_implementation():
    config = small_config(e_layers=2, d_layers=1)
    attention = [
        f"{p}_projection.{w}"
        for p in ("query", "key", "value", "out")
        for w in ("weight", "bias")
    ]
    expected = [
        "enc_embedding.value_embedding.tokenConv.weight",
        "enc_embedding.temporal_embedding.embed.weight",
        "dec_embedding.value_embedding.tokenConv.weight",
        "dec_embedding.temporal_embedding.embed.weight",
    ]
    for i in range(2):
        layer = f"encoder.attn_layers.{i}"
        expected += [f"{layer}.attention.{a}" for a in attention]
        expected += [f"{layer}.conv1.weight", f"{layer}.conv2.weight"]
    expected += ["encoder.norm.layernorm.weight", "encoder.norm.layernorm.bias"]
    expected += [f"decoder.layers.0.self_attention.{a}" for a in attention]
    expected += [f"decoder.layers.0.cross_attention.{a}" for a in attention]
    expected += [
        "decoder.layers.0.conv1.weight",
        "decoder.layers.0.conv2.weight",
        "decoder.layers.0.projection.weight",
        "decoder.norm.layernorm.weight",
        "decoder.norm.layernorm.bias",
        "decoder.projection.weight",
        "decoder.projection.bias",
    ]
    assert list(Autoformer(config).state_dict()) == expected


def test_parameter_shapes_follow_the_reference_implementation():
    config = small_config(enc_in=7, dec_in=7, c_out=1, d_model=16, d_ff=32)
    state = Autoformer(config).state_dict()
    assert state["enc_embedding.value_embedding.tokenConv.weight"].shape == (16, 7, 3)
    assert state["enc_embedding.temporal_embedding.embed.weight"].shape == (16, 4)
    assert state["encoder.attn_layers.0.conv1.weight"].shape == (32, 16, 1)
    assert state["decoder.layers.0.projection.weight"].shape == (1, 16, 3)
    assert state["decoder.projection.weight"].shape == (1, 16)


def test_time_embedding_and_convolutions_have_no_bias():
    names = set(Autoformer(small_config()).state_dict())
    assert "enc_embedding.temporal_embedding.embed.bias" not in names
    assert "enc_embedding.value_embedding.tokenConv.bias" not in names
    assert "encoder.attn_layers.0.conv1.bias" not in names
    assert "decoder.layers.0.projection.bias" not in names


@pytest.mark.parametrize(
    ("name", "group"),
    [
        ("enc_embedding.value_embedding.tokenConv.weight", "embedding"),
        ("dec_embedding.temporal_embedding.embed.weight", "embedding"),
        ("encoder.attn_layers.1.attention.key_projection.bias", "encoder"),
        ("encoder.norm.layernorm.weight", "encoder"),
        ("decoder.layers.0.cross_attention.out_projection.weight", "decoder"),
        ("decoder.layers.0.projection.weight", "decoder"),
        ("decoder.norm.layernorm.bias", "decoder"),
        ("decoder.projection.weight", "projection"),
        ("decoder.projection.bias", "projection"),
    ],
)
def test_parameter_group_of_each_layer(name, group):
    assert parameter_group(name) == group


def test_parameter_group_refuses_unknown_names():
    with pytest.raises(ValueError, match="likelihood.scale"):
        parameter_group("likelihood.scale")


def test_weight_groups_partition_the_parameters():
    model = Autoformer(small_config())
    groups = model.weight_groups()
    assert tuple(groups) == PARAMETER_GROUPS
    listed = [name for names in groups.values() for name in names]
    assert sorted(listed) == sorted(name for name, _ in model.named_parameters())
    assert groups["projection"] == [
        "decoder.projection.weight",
        "decoder.projection.bias",
    ]


# Configuration -------------------------------------------------------------------


def test_defaults_are_the_paper_settings():
    config = AutoformerConfig(enc_in=7, dec_in=7, c_out=7)
    assert (config.seq_len, config.label_len, config.pred_len) == (96, 48, 96)
    assert (config.d_model, config.n_heads, config.d_ff) == (512, 8, 2048)
    assert (config.e_layers, config.d_layers, config.moving_avg) == (2, 1, 25)
    assert config.n_time_features == 4


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("enc_in", 0),
        ("c_out", -1),
        ("seq_len", 0),
        ("label_len", 0),
        ("pred_len", 0),
        ("d_model", 0),
        ("n_heads", 0),
        ("e_layers", 0),
        ("d_layers", 0),
        ("d_ff", 0),
        ("moving_avg", 0),
        ("factor", 0),
        ("n_outputs", 0),
        ("pred_len", 2.5),
        ("d_model", True),
    ],
)
def test_config_refuses_non_positive_sizes(field, value):
    with pytest.raises(ValueError, match=rf"{field}.*{value}"):
        small_config(**{field: value})


def test_config_refuses_label_len_above_seq_len_naming_both():
    with pytest.raises(ValueError, match=r"label_len=50.*seq_len=48"):
        small_config(label_len=50)


def test_config_refuses_width_not_divisible_by_heads():
    with pytest.raises(ValueError, match=r"d_model=16.*n_heads=3"):
        small_config(n_heads=3)


@pytest.mark.parametrize("dropout", [-0.1, 1.0, 1.5])
def test_config_refuses_dropout_outside_unit_interval(dropout):
    with pytest.raises(ValueError, match=rf"dropout.*{dropout}"):
        small_config(dropout=dropout)


def test_config_refuses_unknown_activation():
    with pytest.raises(ValueError, match="activation.*tanh"):
        small_config(activation="tanh")


def test_config_refuses_unknown_frequency():
    with pytest.raises(ValueError, match="freq='fortnight'"):
        small_config(freq="fortnight")


def test_config_refuses_decoder_width_other_than_encoder_width():
    with pytest.raises(ValueError, match=r"dec_in=2.*enc_in=3"):
        small_config(dec_in=2)


def test_config_refuses_more_outputs_than_inputs():
    with pytest.raises(ValueError, match=r"c_out=4.*enc_in=3"):
        small_config(c_out=4)


def test_config_replace_revalidates():
    config = small_config()
    with pytest.raises(ValueError, match="n_outputs"):
        dataclasses.replace(config, n_outputs=0)


@pytest.mark.parametrize("freq", ["15min", "d"])
def test_time_embedding_width_follows_frequency(freq):
    config = small_config(freq=freq)
    model = Autoformer(config)
    width = model.enc_embedding.temporal_embedding.embed.weight.shape[1]
    assert width == config.n_time_features == {"15min": 5, "d": 3}[freq]


# Input checks --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("position", "name", "bad_shape"),
    [
        (0, "x_enc", (2, 47, 3)),
        (1, "x_mark_enc", (2, 48, 5)),
        (2, "x_dec", (2, 47, 3)),
        (3, "x_mark_dec", (1, 48, 4)),
    ],
)
def test_forward_refuses_inputs_of_the_wrong_shape(position, name, bad_shape):
    config = small_config()
    inputs = list(random_inputs(config))
    inputs[position] = torch.zeros(bad_shape)
    with pytest.raises(ValueError, match=rf"{name} must have shape"):
        Autoformer(config)(*inputs)
