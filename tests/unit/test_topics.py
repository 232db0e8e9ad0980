"""ensure_topics retries the transient errors of a cluster that is still settling, and nothing else."""

from __future__ import annotations

import pytest
from kafka.errors import NodeNotReadyError, TopicAuthorizationFailedError, UnknownBrokerIdError

from streams import topics
from streams.settings import Settings


def _flaky(monkeypatch: pytest.MonkeyPatch, errors: list[Exception]) -> list[int]:
    calls: list[int] = []

    def attempt(s: Settings, specs: list[topics.TopicSpec]) -> dict[str, str]:
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return {sp.name: "created" for sp in specs}

    monkeypatch.setattr(topics, "_ensure_topics", attempt)
    monkeypatch.setattr(topics.time, "sleep", lambda s: None)
    return calls


def test_a_settling_cluster_is_retried_until_it_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _flaky(monkeypatch, [UnknownBrokerIdError(3), NodeNotReadyError(2)])
    result = topics.ensure_topics(Settings())
    assert len(calls) == 3 and set(result.values()) == {"created"}


def test_a_real_error_is_raised_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _flaky(monkeypatch, [TopicAuthorizationFailedError()])
    with pytest.raises(TopicAuthorizationFailedError):
        topics.ensure_topics(Settings())
    assert len(calls) == 1


def test_retrying_stops_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _flaky(monkeypatch, [UnknownBrokerIdError(3)] * 50)
    with pytest.raises(UnknownBrokerIdError):
        topics.ensure_topics(Settings(), settle_s=0.0)
    assert len(calls) == 1


def test_the_changelog_pricing_topics_creates_is_the_one_the_worker_writes() -> None:
    from streams.app import create_app
    from streams.settings import load_settings
    from streams.topics import changelog_topic, topic_specs

    s = load_settings({}, store="memory://", app_id="shop-eu")
    app = create_app(s, deterministic_scorer=True)
    app.finalize()
    faust_name = app.tables["users"].changelog_topic.get_topic_name()
    assert faust_name == changelog_topic(s) == "shop-eu-users-changelog"
    assert changelog_topic(s) in {spec.name for spec in topic_specs(s)}
