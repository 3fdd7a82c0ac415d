"""Evaluations say how they sample (steps, guidance). Those made before sampled at their run's
``sampling_steps`` and ``guidance``: their rows get exactly that."""

from django.db import migrations, models


def from_the_run(apps, schema_editor):
    Evaluation = apps.get_model("experiments", "Evaluation")
    for evaluation in Evaluation.objects.select_related("experiment"):
        config = evaluation.experiment.config or {}
        evaluation.sampling_steps = config.get("sampling_steps", 20)
        evaluation.guidance = config.get("guidance", 4.0)
        evaluation.save(update_fields=["sampling_steps", "guidance"])


class Migration(migrations.Migration):
    dependencies = [
        ("experiments", "0009_job_heartbeat"),
    ]

    operations = [
        migrations.AddField(
            model_name="evaluation",
            name="sampling_steps",
            field=models.PositiveSmallIntegerField(default=20),
        ),
        migrations.AddField(
            model_name="evaluation",
            name="guidance",
            field=models.FloatField(default=4.0),
        ),
        migrations.RunPython(from_the_run, migrations.RunPython.noop),
    ]
