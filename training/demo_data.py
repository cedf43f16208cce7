"""The built-in demo dataset, generated deterministically (nothing is downloaded).

A catalogue of 12 categories × 30 items with readable titles, and a few
thousand users whose histories mix one to three interests, so interest
clusters are there to be found. Within an interest, users tend to move along
a category's items in a loose order, which gives "what comes next" a signal.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from training.dataset import Dataset

SEED = 20261128
ITEMS_PER_CATEGORY = 30
NUM_USERS = 3000

# category → (adjectives, nouns, description words)
CATEGORIES: dict[str, tuple[list[str], list[str], str]] = {
    "Science Fiction": (
        ["Quantum", "Stellar", "Orbital", "Galactic", "Cyber", "Android", "Warp", "Nebula"],
        ["Starship", "Colony", "Frontier", "Odyssey", "Protocol", "Horizon", "Singularity"],
        "space travel, alien worlds and future technology",
    ),
    "Cooking": (
        ["Rustic", "Spicy", "Golden", "Slow", "Seasonal", "Tuscan", "Smoky", "Sweet"],
        ["Kitchen", "Bakery", "Feast", "Pantry", "Skillet", "Harvest Table", "Bistro"],
        "recipes, baking and home cooking",
    ),
    "Gardening": (
        ["Green", "Wild", "Cottage", "Urban", "Blooming", "Shady", "Organic", "Perennial"],
        ["Garden", "Orchard", "Greenhouse", "Meadow", "Allotment", "Herb Patch", "Roses"],
        "plants, soil, flowers and vegetable beds",
    ),
    "Jazz": (
        ["Blue", "Midnight", "Smooth", "Swinging", "Cool", "Bebop", "Velvet", "Harlem"],
        ["Saxophone", "Quartet", "Standards", "Session", "Trumpet", "Piano Trio", "Ballads"],
        "jazz records, improvisation and live sessions",
    ),
    "Mystery": (
        ["Silent", "Hidden", "Crooked", "Vanishing", "Poisoned", "Locked", "Shadow", "Cold"],
        ["Detective", "Alibi", "Witness", "Case Files", "Inspector", "Manor", "Clue"],
        "detectives, crimes and whodunits",
    ),
    "Travel": (
        ["Coastal", "Nordic", "Alpine", "Island", "Desert", "Backroad", "Mediterranean", "Andean"],
        ["Journey", "Road Trip", "Guidebook", "Voyage", "Trails", "Rail Tour", "Getaway"],
        "destinations, road trips and travel guides",
    ),
    "Fitness": (
        ["Strong", "Lean", "Daily", "Power", "Core", "Endurance", "Flexible", "Explosive"],
        ["Workout", "Running Plan", "Yoga Flow", "Kettlebell", "Marathon", "Mobility", "HIIT"],
        "training plans, running and strength",
    ),
    "History": (
        [
            "Ancient",
            "Medieval",
            "Imperial",
            "Forgotten",
            "Roman",
            "Victorian",
            "Byzantine",
            "Viking",
        ],
        ["Empire", "Dynasty", "Chronicles", "Crusade", "Kingdom", "Revolution", "Archives"],
        "empires, wars and the people of the past",
    ),
    "Finance": (
        ["Smart", "Frugal", "Passive", "Compound", "Bullish", "Wealthy", "Prudent", "Index"],
        ["Investor", "Portfolio", "Budget", "Retirement", "Dividends", "Markets", "Savings"],
        "investing, saving and personal finance",
    ),
    "Kids Animation": (
        ["Happy", "Tiny", "Bouncy", "Magic", "Sleepy", "Silly", "Brave", "Rainbow"],
        ["Puppy", "Dragon", "Bunny", "Robot Pals", "Penguins", "Fairy", "Dinosaurs"],
        "animated adventures for young children",
    ),
    "Horror": (
        ["Haunted", "Cursed", "Bleeding", "Hollow", "Screaming", "Rotten", "Grim", "Undead"],
        ["Asylum", "Crypt", "Ritual", "Cabin", "Possession", "Graveyard", "Nightmare"],
        "ghosts, monsters and terror",
    ),
    "Photography": (
        ["Analog", "Wide", "Golden Hour", "Portrait", "Street", "Monochrome", "Macro", "Aerial"],
        ["Lens", "Darkroom", "Exposure", "Shutter", "Frames", "Light Study", "Contact Sheet"],
        "cameras, light and composition",
    ),
}


def _catalogue(rng: np.random.Generator) -> pd.DataFrame:
    records: list[dict[str, object]] = []
    for category, (adjectives, nouns, about) in CATEGORIES.items():
        pairs = [(a, n) for a in adjectives for n in nouns]
        chosen = rng.choice(len(pairs), size=ITEMS_PER_CATEGORY, replace=False)
        for position, pair_index in enumerate(chosen):
            adjective, noun = pairs[int(pair_index)]
            records.append(
                {
                    "item_id": f"{len(records) + 1}",
                    "title": f"The {adjective} {noun}",
                    "year": int(rng.integers(1980, 2025)),
                    "categories": [category],
                    "description": f"{about.capitalize()}.",
                    "_category": category,
                    "_order": position,
                }
            )
    return pd.DataFrame.from_records(records)


def generate_demo(
    num_users: int = NUM_USERS, seed: int = SEED, titles_only: bool = False
) -> Dataset:
    """Build the demo Dataset; the same seed gives the same data on every machine.

    `titles_only`: the harder variant (spec `demo-titles`): items keep their title and
    year but lose their category and description, so interest groups must be found from
    behaviour and title words alone (the planted categories stay known to tests).
    """
    rng = np.random.default_rng(seed)
    catalogue = _catalogue(rng)
    categories = list(CATEGORIES)
    by_category = {c: catalogue.index[catalogue["_category"] == c].to_numpy() for c in categories}
    # Zipf-like popularity within a category.
    popularity = 1.0 / np.arange(1, ITEMS_PER_CATEGORY + 1) ** 0.8
    rows = []
    start = 1_700_000_000
    for user in range(1, num_users + 1):
        num_interests = int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15]))
        interests = rng.choice(len(categories), size=num_interests, replace=False)
        weights = rng.dirichlet(np.ones(num_interests) * 2.0)
        length = int(rng.integers(8, 36))
        # A user walks along a category from a random starting point: item
        # i+1..i+3 tends to follow item i.
        cursor = {int(c): int(rng.integers(0, ITEMS_PER_CATEGORY)) for c in interests}
        seen: set[int] = set()
        current = int(rng.choice(interests, p=weights))
        t = start + int(rng.integers(0, 10_000_000))
        for _ in range(length):
            if rng.random() > 0.7:
                current = int(rng.choice(interests, p=weights))
            pool = by_category[categories[current]]
            if rng.random() < 0.6:
                cursor[current] = (cursor[current] + int(rng.integers(1, 4))) % ITEMS_PER_CATEGORY
                row = int(pool[cursor[current]])
            else:
                row = int(pool[rng.choice(ITEMS_PER_CATEGORY, p=popularity / popularity.sum())])
            if row in seen:
                continue
            seen.add(row)
            t += int(rng.integers(60, 86_400))
            rows.append((str(user), catalogue.at[row, "item_id"], t))
    interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    items = catalogue.drop(columns=["_category", "_order"])
    if titles_only:
        items = items.assign(categories=[[] for _ in range(len(items))], description="")
        return Dataset(name="demo-titles", interactions=interactions, items=items)
    return Dataset(name="demo", interactions=interactions, items=items)
