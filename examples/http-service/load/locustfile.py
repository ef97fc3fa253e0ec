"""Locust load for the example coupon service: simulated shoppers POST to the issue route
with random user ids (so users click several times), with no think time, as in a flash sale.

    locust -f examples/http-service/load/locustfile.py --headless \
        --users 500 --spawn-rate 500 --run-time 30s --host http://127.0.0.1:8080

At the end it prints the answers by status and how many coupons were issued, and checks that
no seq was issued twice. Run it as one process (no --processes): the tally is per process.

Environment:
  COUPON                the coupon to buy (default "sale")
  COUPON_USERS          distinct user ids to pick from (default 20000)
  COUPON_LOCUST_REPORT  a file to write the tally to as JSON (the tests read it)
"""

import json
import os
import random
from collections import Counter

from locust import FastHttpUser, events, task

COUPON = os.environ.get("COUPON", "sale")
USERS = int(os.environ.get("COUPON_USERS", "20000"))
REPORT = os.environ.get("COUPON_LOCUST_REPORT")

# Expected answers: 201 issued now, 200 already held, 409 sold out. Anything else fails.
EXPECTED = {200, 201, 409}

answers = Counter()
issued = []  # (user, seq) of every 201


class Shopper(FastHttpUser):
    @task
    def issue(self):
        user = f"user-{random.randint(1, USERS)}"
        with self.client.post(
            f"/coupons/{COUPON}/issue",
            json={"user": user},
            name="/coupons/{coupon}/issue",
            catch_response=True,
        ) as response:
            answers[response.status_code] += 1
            if response.status_code == 201:
                issued.append((user, response.json()["seq"]))
            if response.status_code in EXPECTED:
                response.success()
            else:
                response.failure(f"{response.status_code}: {response.text}")


@events.test_stop.add_listener
def tally(environment, **_kwargs):
    seqs = [seq for _, seq in issued]
    twice = len(seqs) - len(set(seqs))
    by_status = " ".join(f"{status}={count}" for status, count in sorted(answers.items()))
    print(f"answers by status: {by_status}")
    print(f"issued: {len(issued)} coupons, seqs issued twice: {twice}")
    if REPORT:
        with open(REPORT, "w") as out:
            json.dump(
                {
                    "statuses": {str(s): c for s, c in answers.items()},
                    "issued": issued,
                },
                out,
            )
