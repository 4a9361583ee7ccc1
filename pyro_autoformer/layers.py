"""Building blocks of the Autoformer: decomposition, Auto-Correlation, embeddings.

The blocks follow Wu et al. (NeurIPS 2021), "Autoformer: Decomposition Transformers
with Auto-Correlation for Long-Term Series Forecasting", and keep the module and
attribute names of the authors' implementation so that its ``state_dict`` loads
one to one into :class:`~pyro_autoformer.autoformer.Autoformer`. Where the
mathematics differs from that implementation it is said in the docstring of the
block concerned and summarised in :mod:`pyro_autoformer.autoformer`.

All sequence tensors are laid out as ``(batch, time, channels)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

_ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}


def moving_average(x: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Moving average over time with edge-replicating padding, keeping the length.

    The series is padded by repeating its first row ``kernel_size // 2`` times in
    front and its last row ``kernel_size - 1 - kernel_size // 2`` times at the end,
    then averaged over windows of ``kernel_size`` steps. For an odd kernel this is
    the centred average of the reference implementation; for an even kernel the
    window reaches one step further into the past than into the future, where the
    reference pads ``(kernel_size - 1) // 2`` on both sides and loses one step.

    :param torch.Tensor x: series of shape ``(batch, time, channels)``.
    :param int kernel_size: window length in steps, at least 1.
    :returns: the trend, of the same shape as ``x``.
    """
    front = kernel_size // 2
    back = kernel_size - 1 - front
    padded = torch.cat(
        [x[:, :1].expand(-1, front, -1), x, x[:, -1:].expand(-1, back, -1)], dim=1
    )
    # avg_pool1d pools the last axis; the permuted view is fastest on CPU.
    trend = F.avg_pool1d(padded.permute(0, 2, 1), kernel_size, stride=1)
    return trend.permute(0, 2, 1)


class MovingAverage(nn.Module):
    """Trend extractor: :func:`moving_average` as a module.

    :param int kernel_size: window length in steps, at least 1.
    """

    def __init__(self, kernel_size: int):
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
        self.kernel_size = kernel_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the trend of ``x``, of the same shape.

        :param torch.Tensor x: series ``(batch, time, channels)``.
        """
        return moving_average(x, self.kernel_size)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"


class SeriesDecomposition(nn.Module):
    """Split a series into a seasonal part and a moving-average trend.

    Used at the input of the decoder and after every sub-layer of the encoder and
    decoder ("progressive decomposition"): the trend is passed on or discarded and
    the seasonal remainder ``x - trend`` carries on through the network.

    :param int kernel_size: moving-average window in steps, at least 1; even
        windows are allowed (see :func:`moving_average`).
    """

    def __init__(self, kernel_size: int):
        super().__init__()
        self.moving_avg = MovingAverage(kernel_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(seasonal, trend)``, each of the shape of ``x``.

        :param torch.Tensor x: series ``(batch, time, channels)``.
        """
        trend = self.moving_avg(x)
        return x - trend, trend


class SeasonalLayerNorm(nn.Module):
    """Layer norm over channels followed by removal of the mean over time.

    The seasonal part of a series has no level, so after normalising each time
    step the average over the sequence is subtracted (the authors' ``my_Layernorm``).

    :param int channels: width of the last axis (``d_model``).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.layernorm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the normalised, time-centred ``x``, of the same shape.

        :param torch.Tensor x: ``(batch, time, channels)``.
        """
        x_hat = self.layernorm(x)
        return x_hat - x_hat.mean(dim=1, keepdim=True)


def n_top_lags(length: int, factor: int) -> int:
    """Number of lags Auto-Correlation keeps: ``int(factor * ln(length))``.

    At least one lag is kept (the reference keeps none when ``factor * ln(length)
    < 1``) and never more than ``length``.

    :param int length: number of time steps of the queries.
    :param int factor: the model's ``factor`` hyper-parameter.
    """
    return min(length, max(1, int(factor * math.log(length))))


def lag_correlation(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Circular cross-correlation of queries and keys, averaged over channels.

    For every lag ``tau`` in ``0 .. time - 1`` this is::

        R[b, tau] = mean_c sum_t queries[b, t, c] * keys[b, (t - tau) mod time, c]

    computed in ``O(time log time)`` with real FFTs. Averaging before the inverse
    transform (which is linear) gives the same numbers as the reference, which
    inverts every channel of every head and averages afterwards.

    :param torch.Tensor queries: ``(batch, time, channels)``.
    :param torch.Tensor keys: ``(batch, time, channels)``, same shape as
        ``queries``.
    :returns: correlations of shape ``(batch, time)``, indexed by lag.
    """
    length, channels = queries.shape[1], queries.shape[2]
    q_fft = torch.fft.rfft(queries, dim=1)
    k_fft = torch.fft.rfft(keys, dim=1)
    cross_spectrum = torch.einsum("bfc,bfc->bf", q_fft, k_fft.conj()) / channels
    return torch.fft.irfft(cross_spectrum, n=length, dim=-1)


def time_delay_aggregation(
    values: torch.Tensor, weights: torch.Tensor, delays: torch.Tensor
) -> torch.Tensor:
    """Weighted sum of the values rolled by each sample's own delays.

    ``out[b, t] = sum_i weights[b, i] * values[b, (t + delays[b, i]) mod time]``,
    gathered in one indexing operation over all samples and delays.

    :param torch.Tensor values: ``(batch, time, channels)``.
    :param torch.Tensor weights: ``(batch, k)``, one weight per selected lag.
    :param torch.Tensor delays: integer lags ``(batch, k)`` in ``0 .. time - 1``.
    :returns: the aggregated values ``(batch, time, channels)``.
    """
    batch, length, channels = values.shape
    n_lags = delays.shape[1]
    steps = torch.arange(length, device=values.device)
    rows = (steps.view(1, 1, length) + delays.unsqueeze(-1)) % length
    rows = rows + (torch.arange(batch, device=values.device) * length).view(-1, 1, 1)
    rolled = values.reshape(batch * length, channels).index_select(0, rows.view(-1))
    rolled = rolled.view(batch, n_lags, length, channels)
    return torch.einsum("bk,bktc->btc", weights, rolled)


class AutoCorrelation(nn.Module):
    """Auto-Correlation: period discovery by FFT and time-delay aggregation.

    The lag correlations of queries and keys (:func:`lag_correlation`) are ranked
    per sample; the top ``int(factor * ln(time))`` lags are weighted by a softmax
    over their correlations and the values, rolled by each lag, are summed with
    those weights (:func:`time_delay_aggregation`). The same lags and weights are
    used for every head and channel, as in the reference.

    Unlike the reference, which ranks lags by their mean over the batch while
    training and per sample at inference, lags are always chosen per sample, so
    ``train()`` and ``eval()`` compute the same function and no sample's output
    depends on the other samples in its batch.

    When the keys are shorter than the queries they are padded at the end with
    zeros; when longer they are cut to the query length, as in the reference.

    :param int factor: multiplier of ``ln(time)`` in the number of lags kept.
    """

    def __init__(self, factor: int = 1):
        super().__init__()
        self.factor = factor

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
    ) -> torch.Tensor:
        """Aggregate ``values`` along the dominant lags of ``queries`` vs ``keys``.

        :param torch.Tensor queries: ``(batch, time, channels)``.
        :param torch.Tensor keys: ``(batch, source_time, channels)``.
        :param torch.Tensor values: ``(batch, source_time, channels)``.
        :returns: ``(batch, time, channels)``.
        """
        length, source_length = queries.shape[1], keys.shape[1]
        if length > source_length:
            keys = F.pad(keys, (0, 0, 0, length - source_length))
            values = F.pad(values, (0, 0, 0, length - source_length))
        elif length < source_length:
            keys = keys[:, :length]
            values = values[:, :length]

        correlation = lag_correlation(queries, keys)
        top_correlation, delays = torch.topk(
            correlation, n_top_lags(length, self.factor), dim=-1
        )
        weights = torch.softmax(top_correlation, dim=-1)
        return time_delay_aggregation(values, weights, delays)

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


class AutoCorrelationLayer(nn.Module):
    """Projections around :class:`AutoCorrelation`, in place of multi-head attention.

    Queries, keys and values are projected to ``d_model`` channels, correlated and
    aggregated, and projected back. The reference splits the channels into
    ``n_heads`` heads, but since the lags and their weights are shared by all heads
    the split does not change the result and is not materialised here.

    :param AutoCorrelation correlation: the inner mechanism.
    :param int d_model: model width.
    :param int n_heads: number of heads; must divide ``d_model``.
    """

    def __init__(self, correlation: AutoCorrelation, d_model: int, n_heads: int):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(
                f"d_model must be divisible by n_heads, got d_model={d_model}, "
                f"n_heads={n_heads}"
            )
        self.n_heads = n_heads
        self.inner_correlation = correlation
        self.query_projection = nn.Linear(d_model, d_model)
        self.key_projection = nn.Linear(d_model, d_model)
        self.value_projection = nn.Linear(d_model, d_model)
        self.out_projection = nn.Linear(d_model, d_model)

    def forward(
        self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
    ) -> torch.Tensor:
        """Project, correlate and aggregate, and project back.

        :param torch.Tensor queries: ``(batch, time, d_model)``.
        :param torch.Tensor keys: ``(batch, source_time, d_model)``.
        :param torch.Tensor values: ``(batch, source_time, d_model)``.
        :returns: ``(batch, time, d_model)``.
        """
        out = self.inner_correlation(
            self.query_projection(queries),
            self.key_projection(keys),
            self.value_projection(values),
        )
        return self.out_projection(out)


class TokenEmbedding(nn.Module):
    """Value embedding: a width-3 circular convolution over time, without bias.

    :param int c_in: number of input channels.
    :param int d_model: model width.
    """

    def __init__(self, c_in: int, d_model: int):
        super().__init__()
        self.tokenConv = nn.Conv1d(
            c_in, d_model, kernel_size=3, padding=1, padding_mode="circular", bias=False
        )
        nn.init.kaiming_normal_(
            self.tokenConv.weight, mode="fan_in", nonlinearity="leaky_relu"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed values ``(batch, time, c_in)`` as ``(batch, time, d_model)``.

        :param torch.Tensor x: ``(batch, time, c_in)``.
        """
        return self.tokenConv(x.transpose(1, 2)).transpose(1, 2)


class TimeFeatureEmbedding(nn.Module):
    """Linear embedding of the calendar features, without bias ("timeF").

    :param int n_features: number of time features (see
        :func:`pyro_autoformer.timefeatures.n_time_features`).
    :param int d_model: model width.
    """

    def __init__(self, n_features: int, d_model: int):
        super().__init__()
        self.embed = nn.Linear(n_features, d_model, bias=False)

    def forward(self, x_mark: torch.Tensor) -> torch.Tensor:
        """Embed time features as ``(batch, time, d_model)``.

        :param torch.Tensor x_mark: ``(batch, time, n_features)``.
        """
        return self.embed(x_mark)


class DataEmbedding(nn.Module):
    """Sum of value and time-feature embeddings, with dropout; no positions.

    The Autoformer drops the positional encoding of the Transformer because the
    series-wise connections already carry the order (the authors'
    ``DataEmbedding_wo_pos``).

    :param int c_in: number of input channels.
    :param int n_time_features: number of time features.
    :param int d_model: model width.
    :param float dropout: dropout probability.
    """

    def __init__(self, c_in: int, n_time_features: int, d_model: int, dropout: float):
        super().__init__()
        self.value_embedding = TokenEmbedding(c_in, d_model)
        self.temporal_embedding = TimeFeatureEmbedding(n_time_features, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, x_mark: torch.Tensor) -> torch.Tensor:
        """Embed a series and its time features.

        :param torch.Tensor x: values ``(batch, time, c_in)``.
        :param torch.Tensor x_mark: time features ``(batch, time, n_time_features)``.
        :returns: ``(batch, time, d_model)``.
        """
        return self.dropout(self.value_embedding(x) + self.temporal_embedding(x_mark))


class EncoderLayer(nn.Module):
    """Encoder layer: Auto-Correlation and feed-forward, each followed by decomposition.

    Only the seasonal parts are kept; the trends extracted inside the encoder are
    discarded, as in the paper.

    :param AutoCorrelationLayer attention: the self Auto-Correlation block.
    :param int d_model: model width.
    :param int d_ff: width of the feed-forward layer.
    :param int moving_avg: decomposition window in steps.
    :param float dropout: dropout probability.
    :param str activation: ``"gelu"`` or ``"relu"``.
    """

    def __init__(
        self,
        attention: AutoCorrelationLayer,
        d_model: int,
        d_ff: int,
        moving_avg: int,
        dropout: float,
        activation: str,
    ):
        super().__init__()
        self.attention = attention
        self.conv1 = nn.Conv1d(d_model, d_ff, kernel_size=1, bias=False)
        self.conv2 = nn.Conv1d(d_ff, d_model, kernel_size=1, bias=False)
        self.decomp1 = SeriesDecomposition(moving_avg)
        self.decomp2 = SeriesDecomposition(moving_avg)
        self.dropout = nn.Dropout(dropout)
        self.activation = _ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the seasonal part after the layer, of the shape of ``x``.

        :param torch.Tensor x: ``(batch, seq_len, d_model)``.
        """
        x = x + self.dropout(self.attention(x, x, x))
        x, _ = self.decomp1(x)

        y = self.dropout(self.activation(self.conv1(x.transpose(1, 2))))
        y = self.dropout(self.conv2(y).transpose(1, 2))
        x, _ = self.decomp2(x + y)
        return x


class Encoder(nn.Module):
    """Stack of :class:`EncoderLayer` followed by a :class:`SeasonalLayerNorm`.

    :param list layers: the encoder layers.
    :param SeasonalLayerNorm norm_layer: the final norm.
    """

    def __init__(self, layers: list[EncoderLayer], norm_layer: SeasonalLayerNorm):
        super().__init__()
        self.attn_layers = nn.ModuleList(layers)
        self.norm = norm_layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode the embedded context; returns ``(batch, seq_len, d_model)``.

        :param torch.Tensor x: ``(batch, seq_len, d_model)``.
        """
        for layer in self.attn_layers:
            x = layer(x)
        return self.norm(x)


class DecoderLayer(nn.Module):
    """Decoder layer: self and cross Auto-Correlation, feed-forward, trend output.

    Each of the three sub-layers is followed by a decomposition; their three
    trends are summed and projected to ``c_out`` channels by a width-3 circular
    convolution, to be accumulated by the :class:`Decoder`. The self
    Auto-Correlation is not masked; the reference takes a mask argument but never
    applies it.

    :param AutoCorrelationLayer self_attention: Auto-Correlation of the decoder
        input with itself.
    :param AutoCorrelationLayer cross_attention: Auto-Correlation of the decoder
        input with the encoder output.
    :param int d_model: model width.
    :param int c_out: number of output channels of the trend.
    :param int d_ff: width of the feed-forward layer.
    :param int moving_avg: decomposition window in steps.
    :param float dropout: dropout probability.
    :param str activation: ``"gelu"`` or ``"relu"``.
    """

    def __init__(
        self,
        self_attention: AutoCorrelationLayer,
        cross_attention: AutoCorrelationLayer,
        d_model: int,
        c_out: int,
        d_ff: int,
        moving_avg: int,
        dropout: float,
        activation: str,
    ):
        super().__init__()
        self.self_attention = self_attention
        self.cross_attention = cross_attention
        self.conv1 = nn.Conv1d(d_model, d_ff, kernel_size=1, bias=False)
        self.conv2 = nn.Conv1d(d_ff, d_model, kernel_size=1, bias=False)
        self.decomp1 = SeriesDecomposition(moving_avg)
        self.decomp2 = SeriesDecomposition(moving_avg)
        self.decomp3 = SeriesDecomposition(moving_avg)
        self.dropout = nn.Dropout(dropout)
        self.projection = nn.Conv1d(
            d_model,
            c_out,
            kernel_size=3,
            padding=1,
            padding_mode="circular",
            bias=False,
        )
        self.activation = _ACTIVATIONS[activation]

    def forward(
        self, x: torch.Tensor, cross: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the seasonal part and the trend increment of the layer.

        :param torch.Tensor x: decoder input ``(batch, label_len + pred_len,
            d_model)``.
        :param torch.Tensor cross: encoder output ``(batch, seq_len, d_model)``.
        :returns: ``(seasonal, trend)`` of shapes ``(batch, label_len + pred_len,
            d_model)`` and ``(batch, label_len + pred_len, c_out)``.
        """
        x = x + self.dropout(self.self_attention(x, x, x))
        x, trend1 = self.decomp1(x)
        x = x + self.dropout(self.cross_attention(x, cross, cross))
        x, trend2 = self.decomp2(x)

        y = self.dropout(self.activation(self.conv1(x.transpose(1, 2))))
        y = self.dropout(self.conv2(y).transpose(1, 2))
        x, trend3 = self.decomp3(x + y)

        trend = trend1 + trend2 + trend3
        return x, self.projection(trend.transpose(1, 2)).transpose(1, 2)


class Decoder(nn.Module):
    """Stack of :class:`DecoderLayer` with trend accumulation and output head.

    :param list layers: the decoder layers.
    :param SeasonalLayerNorm norm_layer: norm of the final seasonal part.
    :param nn.Linear projection: map from ``d_model`` to the seasonal outputs.
    """

    def __init__(
        self,
        layers: list[DecoderLayer],
        norm_layer: SeasonalLayerNorm,
        projection: nn.Linear,
    ):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = norm_layer
        self.projection = projection

    def forward(
        self, x: torch.Tensor, cross: torch.Tensor, trend: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the projected seasonal part and the accumulated trend.

        :param torch.Tensor x: embedded seasonal input ``(batch, time, d_model)``.
        :param torch.Tensor cross: encoder output ``(batch, seq_len, d_model)``.
        :param torch.Tensor trend: initial trend ``(batch, time, c_out)``.
        :returns: ``(seasonal, trend)``: ``(batch, time, projection outputs)`` and
            ``(batch, time, c_out)``.
        """
        for layer in self.layers:
            x, trend_increment = layer(x, cross)
            trend = trend + trend_increment
        return self.projection(self.norm(x)), trend
