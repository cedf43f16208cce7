from __future__ import annotations

from collections import Counter

from server.bundle.manifest import render_history
from training.demo_data import generate_demo
from training.text import render_item


def test_demo_is_deterministic_and_mixes_one_to_three_interests():
    a, b = generate_demo(num_users=300), generate_demo(num_users=300)
    assert a.interactions.equals(b.interactions)
    assert len(a.items) == 360
    assert a.items["title"].is_unique
    category = dict(zip(a.items["item_id"], (c[0] for c in a.items["categories"]), strict=True))
    interests = Counter(len({category[i] for i in seq}) for seq in a.sequences().values())
    assert set(interests) <= {1, 2, 3}
    assert interests[1] > 50 and interests[2] > 50


def test_render_item_has_title_year_categories():
    text = render_item("Heat", 1995, ["Action", "Crime"], "A long description " * 20)
    assert text.startswith("Heat (1995). Action, Crime. A long description")
    assert len(text) < 200
    assert render_item("Solo", None, []) == "Solo"


def test_history_is_most_recent_first():
    assert render_history(["old", "middle", "new"]) == "new | middle | old"
    assert render_history(["a", "  ", "b"], separator=" ; ") == "b ; a"


def test_the_titles_only_demo_keeps_behaviour_and_drops_categories():
    from training.data import load_spec

    plain, titles = load_spec("demo:40"), load_spec("demo-titles:40")
    assert titles.name == "demo-titles" and not any(titles.items["categories"])
    assert set(titles.items["description"]) == {""}
    assert list(titles.items["title"]) == list(plain.items["title"])
    assert titles.interactions.equals(plain.interactions)
