"""The volunteer flow: no account, an unguessable study link, a participant token in a cookie.

welcome (instructions, consent, Prolific ids) -> trials (two clips, sides randomised and stored,
voting enabled once both played through; the server refuses a vote on a trial sooner than its
clips' duration after it served the page) -> a completion code of the volunteer's own or the
configured completion URL, only once the last vote is stored and never to an excluded volunteer.
Leaving and coming back resumes where the volunteer stopped; a Prolific id stays bound to the
browser that first used it. A wrong or altered token is a 404; a closed study says so.

None of these pages may come from the browser's cache (``never_cache``: Back after the last vote
must ask the server again, which answers with the done page), and a vote sent from a stale page
once the plan is complete stores nothing and answers with the done page too. The pilot link
(``Study.pilot_key``) runs the same flow for participants whose votes are kept apart.
"""

from __future__ import annotations

import hmac
import json
import random

from django.conf import settings
from django.db import IntegrityError, transaction
from django.http import Http404, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_POST

from webapp.live import push
from webapp.media import ranged_file_response
from webapp.ratelimit import exceeded, first_in_window
from webapp.studies.forms import ChoiceForm
from webapp.studies.models import TIMING, Clip, Participant, Study, StudyStatus, Vote

PROLIFIC = {"PROLIFIC_PID": "prolific_pid", "STUDY_ID": "prolific_study_id", "SESSION_ID": "prolific_session_id"}


def cookie_name(study: Study, pilot: bool = False) -> str:
    return f"vpo-study-{study.pk}{'-pilot' if pilot else ''}"


def client_ip(request) -> str:
    """The volunteer's address, for the per-address limits and the hashed address. Behind
    ``VPO_PROXIES`` reverse proxies it is the address the outermost of them saw: the entries
    before it in X-Forwarded-For are the client's own word and could be forged to dodge a limit."""
    proxies = settings.VPO_PROXIES
    if proxies:
        forwarded = [a.strip() for a in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",") if a.strip()]
        if len(forwarded) >= proxies:
            return forwarded[-proxies]
    return request.META.get("REMOTE_ADDR", "")


def study_or_404(token) -> Study:
    return get_object_or_404(Study, token=token)


def participant_or_404(token, ptoken) -> Participant:
    return get_object_or_404(Participant.objects.select_related("study"), token=ptoken, study__token=token)


def closed(request, study):
    return render(request, "studies/closed.html", {"study": study}, status=410)


@never_cache
@ensure_csrf_cookie
def welcome(request, token, key=None):
    study = study_or_404(token)
    pilot = key is not None
    if pilot and not hmac.compare_digest(key, study.pilot_key()):
        raise Http404("no such study")
    if study.status != StudyStatus.OPEN:
        return closed(request, study)
    returning = Participant.objects.filter(
        study=study, pilot=pilot, token=request.COOKIES.get(cookie_name(study, pilot), "")
    ).first()
    # a pilot participant has no Prolific ids: it must not take one a real volunteer will bring
    prolific = {field: "" if pilot else request.GET.get(param, "")[:64] for param, field in PROLIFIC.items()}
    context = {"study": study, "prolific": prolific, "pilot": pilot}
    if request.method == "POST":
        if not request.POST.get("consent"):
            return render(request, "studies/welcome.html", {**context, "need_consent": True}, status=400)
        prolific = {field: "" if pilot else request.POST.get(field, "")[:64] for field in PROLIFIC.values()}
        participant = returning or join(request, study, prolific, pilot)
        if participant is None:
            return render(request, "studies/busy.html", {"study": study}, status=429)
        if participant is TAKEN:
            return render(request, "studies/taken.html", {"study": study}, status=409)
        response = redirect("studies:trial", token=study.token, ptoken=participant.token)
        response.set_cookie(
            cookie_name(study, pilot),
            participant.token,
            max_age=30 * 86400,
            httponly=True,
            samesite="Lax",
            secure=request.is_secure(),
        )
        return response
    if returning is not None:  # came back: carry on where they stopped
        return redirect("studies:trial", token=study.token, ptoken=returning.token)
    return render(request, "studies/welcome.html", context)


TAKEN = object()  # join's answer for a Prolific id that already took part from another browser


def join(request, study: Study, prolific: dict, pilot: bool = False):
    """A new participant with a plan (a pilot one: its votes are kept apart); None when this address
    joined too often; ``TAKEN`` when the Prolific id already has a participant. A Prolific id is
    bound to the browser that first used it (its cookie, which ``welcome`` checks before this):
    another client cannot take over its plan and completion code by sending the same id."""
    if (
        prolific["prolific_pid"]
        and Participant.objects.filter(study=study, prolific_pid=prolific["prolific_pid"]).exists()
    ):
        return TAKEN
    limit, window = settings.STUDY_RATE_LIMITS["join_ip"]
    if exceeded([(f"join:{study.pk}:{study.hashed(client_ip(request))}", limit, window)]):
        return None
    try:
        with transaction.atomic():
            return Participant.objects.create(
                study=study,
                plan=study.plan_for(random.Random()),
                ip_hash=study.hashed(client_ip(request)),
                ua_hash=study.hashed(request.headers.get("User-Agent", "")),
                pilot=pilot,
                **prolific,
            )
    except IntegrityError:  # the same Prolific id joined in another request just now
        return TAKEN


@never_cache
@ensure_csrf_cookie
def trial(request, token, ptoken):
    participant = participant_or_404(token, ptoken)
    study = participant.study
    if study.status != StudyStatus.OPEN:
        return closed(request, study)
    answered = set(participant.votes.values_list("trial_id", flat=True))
    item = participant.next_item(answered)
    if item is None:
        return redirect("studies:done", token=token, ptoken=ptoken)
    right = item["right"]
    clips = {c.pk: c for c in Clip.objects.filter(pk__in=(item["left"], right))}
    participant.served(item["trial"], list(clips.values()))  # the watch time counts from now
    return render(
        request,
        "studies/trial.html",
        {
            "study": study,
            "participant": participant,
            "trial_id": item["trial"],
            "left": clips[item["left"]],
            "right": clips[right],
            "prompt": clips[right].prompt,
            "frame": clips[right].frame_url(),  # image-to-video: both clips start from it
            "answered": len(answered),
            "total": len(participant.plan),
            "percent": round(100 * len(answered) / max(1, len(participant.plan))),
            "vote_url": reverse("studies:vote", args=[token, ptoken]),
        },
    )


@never_cache
@require_POST
def vote(request, token, ptoken):
    """Store one vote. Idempotent: a double click or a replay stores nothing more and gets the same
    answer. One vote per (participant, trial) is a database constraint, not just this check. A vote
    from a stale page once the plan is complete stores nothing and is sent to the done page."""
    participant = Participant.for_vote(token, ptoken)
    if participant is None:
        raise Http404("no such participant")
    study = participant.study
    if study.status != StudyStatus.OPEN:
        return JsonResponse({"error": "this study is closed"}, status=410)
    try:
        data = json.loads(request.body) if request.content_type == "application/json" else request.POST
    except ValueError:
        return JsonResponse({"error": "the body is not JSON"}, status=400)
    if not hasattr(data, "get"):  # a JSON list, string or number
        return JsonResponse({"error": 'the body must be a JSON object {"trial", "choice"}'}, status=400)
    form = ChoiceForm(data)
    if not form.is_valid():
        return JsonResponse({"error": form.errors.get_json_data()}, status=400)
    item = next((i for i in participant.plan if i["trial"] == form.cleaned_data["trial"]), None)
    if item is None:
        return JsonResponse({"error": "that trial is not one of yours"}, status=400)
    total = len(participant.plan)
    if participant.completed is not None:  # Back after the last vote: nothing more to answer
        nxt = reverse("studies:done", args=[token, ptoken])
        return JsonResponse({"stored": False, "next": nxt, "done": True, "answered": total, "total": total})
    choice = form.cleaned_data["choice"]
    if choice == "tie" and not study.allow_tie:
        return JsonResponse({"error": 'this study has no "can\'t tell" option'}, status=400)
    if not participant.watched(item["trial"]) and item["trial"] not in Vote.stored(participant.pk):
        # too early, or a trial whose page was never served: no one watched both clips (a replay of
        # a stored vote is still answered as the first time)
        return JsonResponse({"error": "please watch both videos to the end before answering"}, status=409)
    limits = settings.STUDY_RATE_LIMITS
    over = exceeded(
        [
            (f"vote:p:{participant.pk}", *limits["vote_participant"]),
            (f"vote:ip:{study.hashed(client_ip(request))}", *limits["vote_ip"]),
        ]
    )
    if over:
        return JsonResponse(
            {"error": "too many votes too fast: please slow down", "limit": over.split(":")[1]}, status=429
        )
    timing = {name: form.cleaned_data[name] for name in TIMING}
    stored = Vote.store(participant.pk, item, choice, timing)  # with this vote, or the first one on this trial
    if item["gold"] and stored[item["trial"]] != item["good"]:  # idempotent: a replay changes nothing
        # keyed on the reason, not on ``excluded``: a participant the researcher excluded by hand
        # still gets the gold trial's reason, which a later "include" must respect
        Participant.objects.filter(pk=participant.pk, exclusion_reason="").update(
            excluded=True,
            exclusion_reason=f"failed gold trial {item['trial']}: "
            f"{'chose the degraded clip' if stored[item['trial']] else 'could not tell'}",
        )
    answered = len(stored)
    done = answered >= len(participant.plan)
    if done:
        participant.mark_completed()
    if first_in_window(f"study-notify:{study.pk}", seconds=1):
        # the results page refetches a moment after a notice, so one notice a second is enough
        push(study.group, {"type": "vote.event"})
    nxt = reverse("studies:done" if done else "studies:trial", args=[token, ptoken])
    return JsonResponse(
        {"stored": True, "next": nxt, "done": done, "answered": answered, "total": len(participant.plan)}
    )


@never_cache
def done(request, token, ptoken):
    participant = participant_or_404(token, ptoken)
    study = participant.study
    answered = participant.votes.count()
    if answered < len(participant.plan):  # the code comes only after the last vote is stored
        return redirect("studies:trial", token=token, ptoken=ptoken)
    participant.mark_completed()
    participant.refresh_from_db(fields=["completed", "completion_code", "excluded"])
    if participant.excluded:  # failed an attention check: no code, no completion link
        return render(request, "studies/done.html", {"study": study, "code": None})
    if study.completion_url:
        return redirect(study.completion_url)
    return render(request, "studies/done.html", {"study": study, "code": participant.completion_code})


def clip(request, token, clip_token):
    """A clip by its opaque name: nothing in the URL says which system made it."""
    c = get_object_or_404(Clip.objects.select_related("study"), token=clip_token, study__token=token)
    owner = request.user.is_authenticated and (request.user.is_staff or request.user.pk == c.study.owner_id)
    if c.study.status != StudyStatus.OPEN and not owner:  # a closed study's clips go with it
        raise Http404("no such clip")
    if not c.path.is_file():
        raise Http404("no such clip")
    return ranged_file_response(request, c.path)


def frame(request, token, frame):
    """An image-to-video study's first frame by its opaque name, as its clips are served (the same
    frame goes with every system's clip of a scene, so it tells no system)."""
    c = Clip.objects.select_related("study").filter(frame=frame, study__token=token).exclude(frame="").first()
    if c is None:
        raise Http404("no such frame")
    owner = request.user.is_authenticated and (request.user.is_staff or request.user.pk == c.study.owner_id)
    if c.study.status != StudyStatus.OPEN and not owner:
        raise Http404("no such frame")
    if not c.frame_path.is_file():
        raise Http404("no such frame")
    return ranged_file_response(request, c.frame_path)
