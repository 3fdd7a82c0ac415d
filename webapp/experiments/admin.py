from django.contrib import admin

from webapp.experiments.models import Evaluation, Experiment


@admin.register(Experiment)
class ExperimentAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "owner", "status", "last_step", "last_reward", "created")
    list_filter = ("status",)
    search_fields = ("name", "owner__username")


@admin.register(Evaluation)
class EvaluationAdmin(admin.ModelAdmin):
    list_display = ("id", "experiment", "checkpoint", "status", "created")
