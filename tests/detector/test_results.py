"""Results: the decision rule."""
from dhrclip.detector.results import decide


def test_decision_rule():
    assert decide(0.9, 0.1, 0.5, None) == "anomalous"
    assert decide(0.1, 2.0, 0.5, 1.0) == "anomalous"
    assert decide(0.1, 0.5, 0.5, 1.0) == "normal"
    assert decide(0.1, 0.5, None, None) == ""
