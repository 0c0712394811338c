"""Models built on lstm_fast's layers: the character-level language model, the BiLSTM sequence
classifier with its Naive Bayes baseline, and the interpretable-cell inspector."""

from .charlm import (
    CharLM,
    Sampler,
    TrainConfig,
    evaluate_bpc,
    load_charlm,
    sample_text,
    train_charlm,
)
from .classifier import (
    ClassifierConfig,
    ClassifierEnsemble,
    SequenceClassifier,
    evaluate_classifier,
    load_classifier,
    train_classifier,
)
from .naive_bayes import NaiveBayes

__all__ = [
    "ClassifierConfig",
    "ClassifierEnsemble",
    "NaiveBayes",
    "SequenceClassifier",
    "evaluate_classifier",
    "load_classifier",
    "train_classifier",
    "CharLM",
    "Sampler",
    "TrainConfig",
    "evaluate_bpc",
    "load_charlm",
    "sample_text",
    "train_charlm",
]
