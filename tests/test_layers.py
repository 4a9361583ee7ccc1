"""Specifications of the Autoformer building blocks in :mod:`pyro_autoformer.layers`.

Expected values come from slow, loop-based re-statements of each definition or from
numbers worked out by hand, never from the blocks themselves.
"""

import math

import pytest
import torch

from pyro_autoformer.layers import (
    AutoCorrelation,
    AutoCorrelationLayer,
    SeasonalLayerNorm,
    SeriesDecomposition,
    TokenEmbedding,
    lag_correlation,
    moving_average,
    n_top_lags,
    time_delay_aggregation,
)


def naive_moving_average(x, kernel_size):
    """Window of ``kernel_size`` steps starting ``kernel_size // 2`` steps back,
    indices clamped to the series (the same as repeating the edge rows)."""
    batch, length, channels = x.shape
    out = torch.empty_like(x)
    for b in range(batch):
        for c in range(channels):
            for t in range(length):
                total = 0.0
                for j in range(kernel_size):
                    s = min(max(t - kernel_size // 2 + j, 0), length - 1)
                    total += float(x[b, s, c])
                out[b, t, c] = total / kernel_size
    return out


def naive_lag_correlation(queries, keys):
    """``R[b, tau] = mean_c sum_t q[b, t, c] * k[b, (t - tau) mod L, c]``."""
    batch, length, channels = queries.shape
    out = torch.zeros(batch, length, dtype=queries.dtype)
    for b in range(batch):
        for tau in range(length):
            total = 0.0
            for c in range(channels):
                for t in range(length):
                    total += float(queries[b, t, c] * keys[b, (t - tau) % length, c])
            out[b, tau] = total / channels
    return out


def naive_aggregation(values, weights, delays):
    """``out[b, t] = sum_i w[b, i] * v[b, (t + d[b, i]) mod L]``, one row at a time."""
    batch, length, _ = values.shape
    out = torch.zeros_like(values)
    for b in range(batch):
        for i in range(delays.shape[1]):
            for t in range(length):
                source = (t + int(delays[b, i])) % length
                out[b, t] += weights[b, i] * values[b, source]
    return out


def naive_auto_correlation(queries, keys, values, factor):
    """Pad or cut keys/values to the query length, then rank, softmax, aggregate."""
    length, source = queries.shape[1], keys.shape[1]
    if source < length:
        zeros = torch.zeros(keys.shape[0], length - source, keys.shape[2])
        keys = torch.cat([keys, zeros.to(keys.dtype)], dim=1)
        values = torch.cat([values, zeros.to(values.dtype)], dim=1)
    keys, values = keys[:, :length], values[:, :length]
    correlation = naive_lag_correlation(queries, keys)
    n_lags = max(1, int(factor * math.log(length)))
    out = torch.zeros_like(queries)
    for b in range(queries.shape[0]):
        order = sorted(range(length), key=lambda tau: -float(correlation[b, tau]))
        chosen = order[:n_lags]
        scores = torch.tensor(
            [float(correlation[b, tau]) for tau in chosen], dtype=torch.float64
        )
        weights = torch.exp(scores - scores.max())
        weights = weights / weights.sum()
        out[b] = naive_aggregation(
            values[b : b + 1],
            weights.to(values.dtype).unsqueeze(0),
            torch.tensor([chosen]),
        )[0]
    return out


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# Series decomposition ------------------------------------------------------------


@pytest.mark.parametrize("kernel_size", [1, 3, 4, 5, 25])
def test_seasonal_plus_trend_reconstructs_input(kernel_size):
    x = torch.randn(2, 30, 3, dtype=torch.float64)
    seasonal, trend = SeriesDecomposition(kernel_size)(x)
    torch.testing.assert_close(seasonal + trend, x, rtol=0, atol=1e-13)


@pytest.mark.parametrize("kernel_size", [1, 2, 3, 4, 5, 8, 25])
@pytest.mark.parametrize("length", [7, 12])
def test_trend_equals_naive_moving_average_with_replicate_padding(kernel_size, length):
    x = torch.randn(2, length, 2, dtype=torch.float64)
    _, trend = SeriesDecomposition(kernel_size)(x)
    torch.testing.assert_close(trend, naive_moving_average(x, kernel_size))


@pytest.mark.parametrize("kernel_size", [2, 4, 6, 24])
def test_even_kernel_keeps_series_length(kernel_size):
    x = torch.randn(3, 20, 5)
    seasonal, trend = SeriesDecomposition(kernel_size)(x)
    assert trend.shape == x.shape
    assert seasonal.shape == x.shape


def test_even_kernel_four_matches_hand_computation():
    # Padded with two copies of the first value in front and one of the last at
    # the end: [1, 1, 1, 2, 4, 8, 16, 16]; windows of four steps average to
    # 5/4, 8/4, 15/4, 30/4, 44/4.
    x = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0]).view(1, 5, 1)
    expected = torch.tensor([1.25, 2.0, 3.75, 7.5, 11.0]).view(1, 5, 1)
    torch.testing.assert_close(moving_average(x, 4), expected)


def test_trend_of_a_constant_series_is_the_constant():
    x = torch.full((1, 10, 2), 3.5)
    seasonal, trend = SeriesDecomposition(25)(x)
    torch.testing.assert_close(trend, x)
    torch.testing.assert_close(seasonal, torch.zeros_like(x))


def test_decomposition_refuses_a_kernel_below_one():
    with pytest.raises(ValueError, match="kernel_size.*0"):
        SeriesDecomposition(0)


def test_seasonal_layer_norm_is_layer_norm_minus_its_time_mean():
    x = torch.randn(2, 6, 4, dtype=torch.float64)
    norm = SeasonalLayerNorm(4).double()
    with torch.no_grad():
        norm.layernorm.weight.copy_(torch.tensor([1.0, 2.0, 0.5, -1.0]))
        norm.layernorm.bias.copy_(torch.tensor([0.1, 0.0, -0.3, 2.0]))

    centred = x - x.mean(dim=-1, keepdim=True)
    variance = (centred**2).mean(dim=-1, keepdim=True)
    normed = centred / torch.sqrt(variance + 1e-5)
    normed = normed * norm.layernorm.weight.detach() + norm.layernorm.bias.detach()
    expected = normed - normed.mean(dim=1, keepdim=True)

    torch.testing.assert_close(norm(x), expected)


# Auto-Correlation ----------------------------------------------------------------


@pytest.mark.parametrize("length", [7, 8])
def test_lag_correlation_equals_naive_circular_sum(length):
    queries = torch.randn(2, length, 3, dtype=torch.float64)
    keys = torch.randn(2, length, 3, dtype=torch.float64)
    torch.testing.assert_close(
        lag_correlation(queries, keys), naive_lag_correlation(queries, keys)
    )


def test_lag_correlation_peaks_at_the_shift_between_queries_and_keys():
    # keys[t] = queries[t + 3], so sum_t q[t] * k[t - tau] = sum_t q[t] q[t - tau + 3]
    # is the autocorrelation of q at lag tau - 3, largest at tau = 3.
    queries = torch.randn(1, 16, 1, dtype=torch.float64)
    keys = torch.roll(queries, shifts=-3, dims=1)
    assert int(lag_correlation(queries, keys).argmax()) == 3


@pytest.mark.parametrize(
    ("length", "factor", "expected"),
    [(96, 1, 4), (144, 1, 4), (720, 1, 6), (10, 3, 6), (2, 1, 1), (1, 1, 1)],
)
def test_number_of_lags_is_factor_times_log_length_at_least_one(
    length, factor, expected
):
    assert n_top_lags(length, factor) == expected


def test_time_delay_aggregation_equals_naive_loop():
    values = torch.randn(3, 9, 4, dtype=torch.float64)
    weights = torch.softmax(torch.randn(3, 2, dtype=torch.float64), dim=-1)
    delays = torch.tensor([[0, 5], [8, 1], [3, 3]])
    torch.testing.assert_close(
        time_delay_aggregation(values, weights, delays),
        naive_aggregation(values, weights, delays),
    )


def test_time_delay_aggregation_by_hand():
    # One lag of 1 with weight 1 reads the next step, wrapping around.
    values = torch.tensor([10.0, 20.0, 30.0]).view(1, 3, 1)
    out = time_delay_aggregation(values, torch.ones(1, 1), torch.tensor([[1]]))
    torch.testing.assert_close(out, torch.tensor([20.0, 30.0, 10.0]).view(1, 3, 1))


@pytest.mark.parametrize(
    ("length", "source_length"), [(12, 12), (20, 12), (9, 12)], ids=str
)
def test_auto_correlation_equals_naive_rank_softmax_aggregate(length, source_length):
    queries = torch.randn(2, length, 3, dtype=torch.float64)
    keys = torch.randn(2, source_length, 3, dtype=torch.float64)
    values = torch.randn(2, source_length, 3, dtype=torch.float64)
    out = AutoCorrelation(factor=1)(queries, keys, values)
    expected = naive_auto_correlation(queries, keys, values, factor=1)
    assert out.shape == (2, length, 3)
    torch.testing.assert_close(out, expected)


def test_auto_correlation_chooses_lags_per_sample_in_train_and_eval():
    correlation = AutoCorrelation(factor=1)
    queries = torch.randn(4, 16, 3, dtype=torch.float64)
    keys = torch.randn(4, 16, 3, dtype=torch.float64)
    values = torch.randn(4, 16, 3, dtype=torch.float64)
    expected = torch.cat(
        [
            naive_auto_correlation(
                queries[b : b + 1], keys[b : b + 1], values[b : b + 1], 1
            )
            for b in range(4)
        ]
    )
    torch.testing.assert_close(correlation.train()(queries, keys, values), expected)
    torch.testing.assert_close(correlation.eval()(queries, keys, values), expected)


def test_auto_correlation_layer_refuses_heads_not_dividing_width():
    with pytest.raises(ValueError, match="d_model=10.*n_heads=3"):
        AutoCorrelationLayer(AutoCorrelation(), d_model=10, n_heads=3)


# Embedding -----------------------------------------------------------------------


def test_token_embedding_is_circular_width_three_convolution():
    embedding = TokenEmbedding(c_in=2, d_model=3).double()
    x = torch.randn(1, 5, 2, dtype=torch.float64)
    weight = embedding.tokenConv.weight.detach()  # (d_model, c_in, 3)
    expected = torch.zeros(1, 5, 3, dtype=torch.float64)
    for t in range(5):
        for j in range(3):
            expected[0, t] += weight[:, :, j] @ x[0, (t - 1 + j) % 5]
    torch.testing.assert_close(embedding(x), expected)
