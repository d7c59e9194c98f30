"""Analysis: the math of causal tracing and of the CounterFact metrics. Tensors in, numbers out."""
