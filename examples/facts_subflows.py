"""Subflows: a parent flow calls two flows that fetch a cat fact and a dog fact, and prints them.

    python examples/facts_subflows.py

The course fetched them from public APIs (catfact.ninja, dogapi.dog). Here the script serves
look-alike JSON on 127.0.0.1 (a free port) for the duration of the run: `GET /fact` answers
`{"fact": ..., "length": ...}`, `GET /api/v2/facts` answers `{"data": [{"attributes": {"body": ...}}]}`.
The parent flow has `log_prints=True`: its `print()` output is also sent to Prefect as log lines.
In the UI: `animal-facts` with two subflow runs, `fetch-cat-fact` and `fetch-dog-fact`.

To run the flows against another service (e.g. when deployed), pass its base URL as `api_url`.
"""

from __future__ import annotations

import httpx
from prefect import flow


@flow(name="fetch-cat-fact")
def fetch_cat_fact(api_url: str) -> str:
    response = httpx.get(f"{api_url}/fact", params={"max_length": 140}, timeout=10)
    response.raise_for_status()
    return response.json()["fact"]


@flow(name="fetch-dog-fact")
def fetch_dog_fact(api_url: str) -> str:
    response = httpx.get(f"{api_url}/api/v2/facts", headers={"accept": "application/json"}, timeout=10)
    response.raise_for_status()
    return response.json()["data"][0]["attributes"]["body"]


@flow(name="animal-facts", log_prints=True)
def animal_facts(api_url: str) -> dict[str, str]:
    cat_fact = fetch_cat_fact(api_url)
    dog_fact = fetch_dog_fact(api_url)
    print(f"Cat fact: {cat_fact}")
    print(f"Dog fact: {dog_fact}")
    return {"cat": cat_fact, "dog": dog_fact}


def main() -> None:
    from _local_http import cat_fact_route, dog_fact_route, serve_json  # only needed when run as a script

    with serve_json({"/fact": cat_fact_route(), "/api/v2/facts": dog_fact_route()}) as api_url:
        animal_facts(api_url)


if __name__ == "__main__":
    main()
