"""Studies: causal-tracing and CounterFact evaluation runs on registered models, and their figures."""
