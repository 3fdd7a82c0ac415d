"""``manage.py export_pairs STUDY_ID OUT``: a study's votes as preference pairs (``vpo/pairs.py``),
what ``vpo reward-model train --pairs OUT`` reads. The clips stay where the study keeps them; OUT
names them by absolute path (relative if they lie under OUT's folder)."""

from django.core.management.base import BaseCommand, CommandError

from vpo.pairs import write_pairs
from webapp.studies.models import Study
from webapp.studies.results import study_pairs


class Command(BaseCommand):
    help = "write a study's votes as preference pairs (JSONL)"

    def add_arguments(self, parser):
        parser.add_argument("study_id", type=int)
        parser.add_argument("out", help="the JSONL file to write")

    def handle(self, study_id, out, **options):
        study = Study.objects.filter(pk=study_id).first()
        if study is None:
            raise CommandError(f"no study {study_id}", returncode=2)
        pairs = study_pairs(study)
        if not pairs:
            raise CommandError(f"study {study_id} ({study.name!r}) has no votes to export", returncode=2)
        path = write_pairs(pairs, out)
        ties = sum(p.choice == "tie" for p in pairs)
        self.stdout.write(f"{len(pairs)} pairs ({ties} ties) -> {path}")
