"""Tests of the Istio frontend: istiod's golden translations and the corpus."""
