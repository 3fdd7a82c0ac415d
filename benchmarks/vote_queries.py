"""CPU per vote inside one process (no server, no concurrency): the whole vote request through
Django's WSGI handler, and the vote's database work written out in SQL (what the view does) beside
the same work through the ORM (what it did before), on PostgreSQL.

    python benchmarks/vote_queries.py [--votes 400]

Uses the scratch database of benchmarks/votes.py (``vpo_bench``, recreated). Why it matters: the
servers in votes.py spend their CPU on this view; see docs/votes.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import sys
import time

from votes import SERVER_ENV, make_study, recreate_database

os.environ.update(SERVER_ENV)  # the servers' settings: scratch database, DEBUG off, rate limits raised


def cpu_ms(fn, items) -> float:
    """Median over 5 rounds of CPU milliseconds per call of ``fn`` on each of ``items``."""
    rounds = []
    for _ in range(5):
        t = time.process_time()
        for item in items:
            fn(item)
        rounds.append(1000 * (time.process_time() - t) / len(items))
    return sorted(rounds)[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--votes", type=int, default=400, help="vote requests per round")
    args = ap.parse_args()
    recreate_database()
    import django

    django.setup()
    from django.core.handlers.wsgi import WSGIHandler
    from django.middleware.csrf import _get_new_csrf_string, _mask_cipher_secret

    from webapp.studies.models import Participant, Vote

    study = make_study(20)
    participants = [
        Participant.objects.create(study=study, plan=study.plan_for(random.Random(i)), ip_hash="-", ua_hash="-")
        for i in range(args.votes // 20 + 1)
    ]
    votes = [(p, item) for p in participants for item in p.plan][: args.votes + 1]

    # 1. the whole request, in-process: first votes, then the same votes again (replays)
    handler, secret = WSGIHandler(), _get_new_csrf_string()

    def request(vote):
        p, item = vote
        body = json.dumps({"trial": item["trial"], "choice": "left"}).encode()
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": f"/s/{study.token}/p/{p.token}/vote",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "80",
            "HTTP_HOST": "127.0.0.1",
            "SCRIPT_NAME": "",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": sys.stderr,
            "CONTENT_LENGTH": str(len(body)),
            "CONTENT_TYPE": "application/json",
            "REMOTE_ADDR": "127.0.0.1",
            "HTTP_COOKIE": f"csrftoken={secret}",
            "HTTP_X_CSRFTOKEN": _mask_cipher_secret(secret),
        }
        status = []
        response = handler(environ, lambda s, headers, *_: status.append(s))
        b"".join(response)
        response.close()
        assert status[0].startswith("200"), (status, b"".join(response)[:200])

    request(votes.pop())  # warm-up: imports the URLconf (and scipy under the results views)
    t = time.process_time()
    for vote in votes:
        request(vote)
    first = 1000 * (time.process_time() - t) / len(votes)
    replay = cpu_ms(request, votes)

    # 2. the database work of one vote, written out (the view) and through the ORM (as it was)
    lookup_sql = cpu_ms(lambda v: Participant.for_vote(study.token, v[0].token), votes)
    lookup_orm = cpu_ms(
        lambda v: Participant.objects.select_related("study").get(token=v[0].token, study__token=study.token), votes
    )
    store_sql = cpu_ms(lambda v: Vote.store(v[0].pk, v[1], "left"), votes)

    def store_orm(vote):
        p, item = vote
        Vote.objects.bulk_create(
            [
                Vote(
                    participant_id=p.pk,
                    trial_id=item["trial"],
                    choice="left",
                    left_id=item["left"],
                    chosen_id=item["left"],
                )
            ],
            ignore_conflicts=True,
        )
        return dict(Vote.objects.filter(participant_id=p.pk).values_list("trial_id", "chosen_id"))

    store_orm_ms = cpu_ms(store_orm, votes)

    print(f"{len(votes)} votes, in-process on PostgreSQL (CPU of this process; PostgreSQL's own not counted):")
    print(f"  whole vote request through Django: first vote {first:.2f} ms, replay {replay:.2f} ms")
    print(
        f"  participant lookup: SQL {lookup_sql:.3f} ms vs ORM select_related {lookup_orm:.3f} ms "
        f"({lookup_orm / lookup_sql:.1f}x)"
    )
    print(
        f"  store + read back:  SQL {store_sql:.3f} ms vs ORM bulk_create + values_list {store_orm_ms:.3f} ms "
        f"({store_orm_ms / store_sql:.1f}x)"
    )


if __name__ == "__main__":
    main()
