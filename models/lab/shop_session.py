"""One live session of a :class:`~models.lab.shop_market.ShopMarket` user in the closed loop.

:class:`~models.lab.live_market.LiveMarket` runs :class:`~models.lab.simulator.Market` sessions
itself; a shop user behaves as the shop's history does instead: views picked from a listing at the
prices this user sees (the loop's listing rule, with the shop's pick score), each view priced live,
then the shop's funnel at the shown price (intent and WTP; click; cart, abandoned when WTP is below
the price; a later re-view), impulse buyers buying at once and leaving, everyone else buying at the
end of the session. A re-view is sent as a ``view`` at the price the user was shown: the user has
already decided, so the worker's decision for it is not shown (it only updates the listing price).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import orjson

from streams.schemas import ClickEvent

from .shop_market import ShopMarket


async def shop_session(live: Any, k: int, u: int, start: float, clock: Any) -> None:
    """Session ``k`` of user ``u`` of the loop ``live`` (a ``LiveMarket`` over a ``ShopMarket``)."""
    m: ShopMarket = live.m
    rng = np.random.default_rng([live.cfg.seed, k])
    uid, sid = m.user_ids[u], f"{live.run_id}-s{k}"
    n_view = int(m.n_views(np.array([u]), rng)[0])
    t, rows, bought, again = start, [], [], []
    for j, i in enumerate(live._listing(u, rng, n_view)):
        t += 20.0 + rng.exponential(40.0)
        await clock.sleep_until(t)
        view, pe, ms, price = await live.priced_view(sid, uid, j, i, t)
        iid = view.item_id
        f = {key: v.item() for key, v in m.funnel(np.array(u), np.array(i), np.array(price), rng).items()}
        if f["click"]:
            tc = t + rng.uniform(3, 8)
            await clock.sleep_until(tc)
            await live._send(replace(view, event_id=f"{sid}-c{j}", ts=tc, type="click", price=price))
        if f["cart"]:
            ta = t + rng.uniform(9, 19)
            await clock.sleep_until(ta)
            await live._send(replace(view, event_id=f"{sid}-a{j}", ts=ta, type="add_to_cart", price=price))
        rows.append(live._exposure(u, i, view, pe, price, float(f["p_buy"]), bool(f["buy"]), ms))
        if f["buy"] and m.impulse[u]:  # buys at once and leaves
            t += rng.uniform(20.0, 40.0)
            await _purchase(live, clock, rows[-1], f"{sid}-p0", t, rng)
            break
        if f["buy"]:
            bought.append(len(rows) - 1)
        if f["re_view"]:
            again.append((j, iid, price))
    else:
        times = np.sort(t + rng.uniform(10.0, 120.0, len(again)))
        for (j, iid, price), tr in zip(again, times.tolist(), strict=True):  # compared again before deciding
            await clock.sleep_until(tr)
            await live._send(ClickEvent(f"{sid}-rv{j}", tr, uid, sid, "view", iid, price))
        for n, r in enumerate(bought):
            await _purchase(live, clock, rows[r], f"{sid}-p{n}", t + 150.0 + 10.0 * (n + 1), rng)
    assert live._exposures is not None
    for row in rows:
        live._exposures.write(orjson.dumps(row) + b"\n")
    live.counts.sessions += 1


async def _purchase(live: Any, clock: Any, row: dict[str, Any], eid: str, ts: float,
                    rng: np.random.Generator) -> None:
    """The purchase of an exposure-log row at its shown price, sometimes followed by a review."""
    m: ShopMarket = live.m
    uid, sid = row["user_id"], row["session_id"]
    await clock.sleep_until(ts)
    await live._send(ClickEvent(eid, ts, uid, sid, "purchase", row["item_id"], row["price"]))
    row["purchase_ts"] = ts
    live.counts.purchases += 1
    if rng.random() < 0.3:
        q = m.quality[live.item_index[row["item_id"]]]
        stars = float(np.clip(np.round(3.5 + 2 * q + rng.normal(0, 0.7)), 1, 5))
        await live._send(ClickEvent(f"{eid}-r", ts + 5.0, uid, sid, "review", row["item_id"], row["price"],
                                    rating=stars))
