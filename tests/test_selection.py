from r3v_ray.method.selection import majority_vote


def test_most_common_wins():
    assert majority_vote(["B", "A", "A"]) == ("A", {"B": 1, "A": 2})


def test_tie_broken_by_earliest_first_occurrence():
    assert majority_vote(["C", "A", "A", "C", None]) == ("C", {"C": 2, "A": 2})
    assert majority_vote(["A", "C", "C", "A"])[0] == "A"


def test_none_never_votes():
    assert majority_vote([None, None, "B"]) == ("B", {"B": 1})
    assert majority_vote([None, "A", None, "B", "B"])[0] == "B"


def test_all_none_or_empty_gives_none():
    assert majority_vote([None, None]) == (None, {})
    assert majority_vote([]) == (None, {})
