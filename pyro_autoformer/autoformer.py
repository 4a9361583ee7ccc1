"""The deterministic Autoformer network (Wu et al., NeurIPS 2021).

An encoder-decoder for long-horizon forecasting in which self-attention is replaced
by Auto-Correlation (period discovery by FFT, aggregation of the series rolled by
its dominant lags) and every block separates a moving-average trend from the
seasonal remainder. The decoder starts from the decomposition of the encoder input:
its seasonal stream is the last ``label_len`` seasonal rows followed by zeros, its
trend stream the last ``label_len`` trend rows followed by the mean of the input;
the trends extracted by the decoder layers are projected and accumulated onto it,
and the forecast is the sum of the final seasonal and trend streams.

Module and parameter names are those of the authors' implementation
(``thuml/Autoformer``), so a ``state_dict`` of its ``Model`` trained with the
``timeF`` embedding loads into :class:`Autoformer` one to one. The mathematics
differs from that implementation in four places:

1. Lags are always chosen per sample. The reference ranks lags by their mean over
   the batch while training and per sample at inference; here ``train()`` and
   ``eval()`` compute the same function (up to dropout), and no sample's forecast
   depends on the other samples in its batch, which Monte-Carlo prediction needs.
2. An even ``moving_avg`` keeps the series length: the padding is ``k // 2`` rows in
   front and ``k - 1 - k // 2`` at the end, where the reference pads
   ``(k - 1) // 2`` on both sides and loses a step. Odd windows are unchanged.
3. At least one lag is kept when ``factor * ln(length) < 1``.
4. With fewer outputs than inputs (``c_out < enc_in``, mode ``MS``: all channels
   in, the target out, the target being the last column), the trend stream is
   built from the last ``c_out`` channels of ``x_enc`` only. The reference carries
   all ``enc_in`` trend channels and keeps the last one at the end, which gives the
   same forecast for the target.

The decoder input ``x_dec`` is checked for shape but, as in the reference, its
values are not read: the decoder's input is built from ``x_enc``.

Usage::

    config = AutoformerConfig(enc_in=7, dec_in=7, c_out=7, pred_len=336)
    model = Autoformer(config)
    forecast = model(x_enc, x_mark_enc, x_dec, x_mark_dec)  # (batch, 336, 7)
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch
from torch import nn

from . import timefeatures
from .layers import (
    AutoCorrelation,
    AutoCorrelationLayer,
    DataEmbedding,
    Decoder,
    DecoderLayer,
    Encoder,
    EncoderLayer,
    SeasonalLayerNorm,
    SeriesDecomposition,
)

__all__ = ["AutoformerConfig", "Autoformer", "PARAMETER_GROUPS", "parameter_group"]

ACTIVATIONS = ("gelu", "relu")
PARAMETER_GROUPS = ("embedding", "encoder", "decoder", "projection")

_POSITIVE_INTS = (
    "enc_in",
    "dec_in",
    "c_out",
    "seq_len",
    "label_len",
    "pred_len",
    "d_model",
    "n_heads",
    "e_layers",
    "d_layers",
    "d_ff",
    "moving_avg",
    "factor",
    "n_outputs",
)


@dataclass
class AutoformerConfig:
    """Sizes and hyper-parameters of an :class:`Autoformer`, validated on creation.

    Defaults are the paper's ETT settings (input 96, label 48, horizon 96,
    ``d_model`` 512, 8 heads, 2 encoder layers, 1 decoder layer, window 25).

    :param int enc_in: channels of the encoder input ``x_enc``.
    :param int dec_in: channels of the decoder input ``x_dec``; must equal
        ``enc_in`` because the decoder's input is the seasonal part of ``x_enc``.
    :param int c_out: output channels, at most ``enc_in``; with fewer, the outputs
        are the last ``c_out`` input channels (mode ``MS``).
    :param int seq_len: encoder input length in steps.
    :param int label_len: known steps the decoder starts from, at most ``seq_len``.
    :param int pred_len: forecast horizon in steps; may exceed ``seq_len``.
    :param int d_model: model width; a multiple of ``n_heads``.
    :param int n_heads: Auto-Correlation heads.
    :param int e_layers: encoder layers.
    :param int d_layers: decoder layers.
    :param int d_ff: feed-forward width.
    :param int moving_avg: decomposition window in steps (odd or even).
    :param int factor: Auto-Correlation keeps ``int(factor * ln(length))`` lags.
    :param float dropout: dropout probability in ``[0, 1)``.
    :param str activation: feed-forward activation, ``"gelu"`` or ``"relu"``.
    :param str freq: sampling frequency; sets the number of time features (see
        :func:`pyro_autoformer.timefeatures.n_time_features`).
    :param int n_outputs: values per channel and step, for example one per
        quantile; 1 for a point forecast.
    """

    enc_in: int
    dec_in: int
    c_out: int
    seq_len: int = 96
    label_len: int = 48
    pred_len: int = 96
    d_model: int = 512
    n_heads: int = 8
    e_layers: int = 2
    d_layers: int = 1
    d_ff: int = 2048
    moving_avg: int = 25
    factor: int = 1
    dropout: float = 0.05
    activation: str = "gelu"
    freq: str = "h"
    n_outputs: int = 1

    def __post_init__(self):
        for name in _POSITIVE_INTS:
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, numbers.Integral)
                or value < 1
            ):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
            setattr(self, name, int(value))

        if self.label_len > self.seq_len:
            raise ValueError(
                f"label_len={self.label_len} must not exceed seq_len={self.seq_len}: "
                "the decoder starts from the last label_len steps of the encoder input"
            )
        if self.d_model % self.n_heads != 0:
            raise ValueError(
                f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}"
            )
        if self.dec_in != self.enc_in:
            raise ValueError(
                f"dec_in={self.dec_in} must equal enc_in={self.enc_in}: the decoder "
                "input is the seasonal part of x_enc"
            )
        if self.c_out > self.enc_in:
            raise ValueError(
                f"c_out={self.c_out} must not exceed enc_in={self.enc_in}: the "
                "outputs are the last c_out input channels"
            )
        if (
            isinstance(self.dropout, bool)
            or not isinstance(self.dropout, numbers.Real)
            or not 0.0 <= self.dropout < 1.0
        ):
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {ACTIVATIONS}, got {self.activation!r}"
            )
        try:
            timefeatures.n_time_features(self.freq)
        except ValueError as error:
            raise ValueError(f"freq={self.freq!r} is not valid: {error}") from None

    @property
    def n_time_features(self) -> int:
        """Width of the time marks ``x_mark_enc``/``x_mark_dec`` for ``freq``."""
        return timefeatures.n_time_features(self.freq)

    @property
    def dec_len(self) -> int:
        """Length of the decoder input: ``label_len + pred_len``."""
        return self.label_len + self.pred_len


def parameter_group(name: str) -> str:
    """Return the layer group of an :class:`Autoformer` parameter.

    Use it to choose which layers get priors: ``embedding`` (value and time-feature
    embeddings of encoder and decoder), ``encoder``, ``decoder`` (the decoder
    layers and its norm, including the trend projections) or ``projection`` (the
    final linear map ``decoder.projection``).

    :param str name: a parameter name as in ``named_parameters()``, e.g.
        ``"encoder.attn_layers.0.conv1.weight"``.
    :raises ValueError: if the name belongs to none of the groups.
    """
    if name.startswith(("enc_embedding.", "dec_embedding.")):
        return "embedding"
    if name.startswith("decoder.projection."):
        return "projection"
    if name.startswith("encoder."):
        return "encoder"
    if name.startswith("decoder."):
        return "decoder"
    raise ValueError(f"{name!r} is not an Autoformer parameter name")


class Autoformer(nn.Module):
    """Autoformer: decomposition Transformer with Auto-Correlation.

    Use it as the deterministic forecaster, or as the network whose weights a
    Bayesian model puts priors on. It maps a context window and its time features
    to a forecast of the next ``pred_len`` steps. See the module docstring for the
    differences from the reference implementation.

    :param AutoformerConfig config: sizes and hyper-parameters.
    """

    def __init__(self, config: AutoformerConfig):
        super().__init__()
        self.config = config
        c = config
        n_marks = c.n_time_features
        self.n_time_features = n_marks

        self.decomp = SeriesDecomposition(c.moving_avg)
        self.enc_embedding = DataEmbedding(c.enc_in, n_marks, c.d_model, c.dropout)
        self.dec_embedding = DataEmbedding(c.dec_in, n_marks, c.d_model, c.dropout)

        def correlation_layer() -> AutoCorrelationLayer:
            return AutoCorrelationLayer(AutoCorrelation(c.factor), c.d_model, c.n_heads)

        self.encoder = Encoder(
            [
                EncoderLayer(
                    correlation_layer(),
                    c.d_model,
                    c.d_ff,
                    c.moving_avg,
                    c.dropout,
                    c.activation,
                )
                for _ in range(c.e_layers)
            ],
            norm_layer=SeasonalLayerNorm(c.d_model),
        )
        self.decoder = Decoder(
            [
                DecoderLayer(
                    correlation_layer(),
                    correlation_layer(),
                    c.d_model,
                    c.c_out,
                    c.d_ff,
                    c.moving_avg,
                    c.dropout,
                    c.activation,
                )
                for _ in range(c.d_layers)
            ],
            norm_layer=SeasonalLayerNorm(c.d_model),
            projection=nn.Linear(c.d_model, c.c_out * c.n_outputs),
        )

    def weight_groups(self) -> dict[str, list[str]]:
        """Return the parameter names of each layer group.

        Groups are those of :func:`parameter_group`; every group in
        :data:`PARAMETER_GROUPS` is a key, and names keep ``named_parameters()``
        order.
        """
        groups = {group: [] for group in PARAMETER_GROUPS}
        for name, _ in self.named_parameters():
            groups[parameter_group(name)].append(name)
        return groups

    def _check_inputs(self, x_enc, x_mark_enc, x_dec, x_mark_dec) -> None:
        c = self.config
        batch = x_enc.shape[0] if x_enc.dim() == 3 else None
        marks = self.n_time_features
        expected = {
            "x_enc": (x_enc, (batch, c.seq_len, c.enc_in)),
            "x_mark_enc": (x_mark_enc, (batch, c.seq_len, marks)),
            "x_dec": (x_dec, (batch, c.dec_len, c.dec_in)),
            "x_mark_dec": (x_mark_dec, (batch, c.dec_len, marks)),
        }
        for name, (tensor, shape) in expected.items():
            if tuple(tensor.shape) != shape:
                raise ValueError(
                    f"{name} must have shape (batch, {shape[1]}, {shape[2]}), got "
                    f"{tuple(tensor.shape)}"
                )

    def forward(
        self,
        x_enc: torch.Tensor,
        x_mark_enc: torch.Tensor,
        x_dec: torch.Tensor,
        x_mark_dec: torch.Tensor,
    ) -> torch.Tensor:
        """Forecast the ``pred_len`` steps after ``x_enc``.

        :param torch.Tensor x_enc: context ``(batch, seq_len, enc_in)``.
        :param torch.Tensor x_mark_enc: its time features ``(batch, seq_len, M)``.
        :param torch.Tensor x_dec: decoder input ``(batch, label_len + pred_len,
            dec_in)``; only its shape is checked.
        :param torch.Tensor x_mark_dec: time features of the decoder steps
            ``(batch, label_len + pred_len, M)``.
        :returns: ``(batch, pred_len, c_out)`` when ``n_outputs == 1``, else
            ``(batch, pred_len, c_out, n_outputs)``; the trend is added to every
            one of the ``n_outputs`` seasonal outputs.
        """
        self._check_inputs(x_enc, x_mark_enc, x_dec, x_mark_dec)
        c = self.config
        batch = x_enc.shape[0]

        # Decoder initialisation from the decomposition of the context.
        seasonal, trend = self.decomp(x_enc)
        targets = slice(c.enc_in - c.c_out, c.enc_in)
        level = x_enc[:, :, targets].mean(dim=1, keepdim=True)
        trend_init = torch.cat(
            [trend[:, -c.label_len :, targets], level.expand(-1, c.pred_len, -1)],
            dim=1,
        )
        seasonal_init = torch.cat(
            [
                seasonal[:, -c.label_len :],
                seasonal.new_zeros(batch, c.pred_len, c.enc_in),
            ],
            dim=1,
        )

        enc_out = self.encoder(self.enc_embedding(x_enc, x_mark_enc))
        dec_out = self.dec_embedding(seasonal_init, x_mark_dec)
        seasonal_part, trend_part = self.decoder(dec_out, enc_out, trend=trend_init)

        seasonal_part = seasonal_part[:, -c.pred_len :]
        trend_part = trend_part[:, -c.pred_len :]
        if c.n_outputs == 1:
            return seasonal_part + trend_part
        seasonal_part = seasonal_part.reshape(batch, c.pred_len, c.c_out, c.n_outputs)
        return seasonal_part + trend_part.unsqueeze(-1)
