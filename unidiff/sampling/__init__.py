"""Sampling: the visible loop (`loop`: `sample`, the `Sampler` of slots behind it, `GroupSpec`), proposals
(`proposals`), unmasking policies (`policies`), autoregressive decoding (`causal`) and continuous batching
(`stream`)."""

from unidiff.sampling.causal import sample_causal
from unidiff.sampling.loop import GroupSpec, SampleOutput, Sampler, sample
from unidiff.sampling.proposals import filter_logits, propose
from unidiff.sampling.stream import sample_stream

__all__ = ["GroupSpec", "SampleOutput", "Sampler", "filter_logits", "propose", "sample", "sample_causal",
           "sample_stream"]
