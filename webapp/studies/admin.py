from django.contrib import admin

from webapp.studies.models import Participant, Study


@admin.register(Study)
class StudyAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "owner", "status", "created")
    list_filter = ("status",)


@admin.register(Participant)
class ParticipantAdmin(admin.ModelAdmin):
    list_display = ("id", "study", "prolific_pid", "created", "completed", "excluded", "excluded_manually", "pilot")
    list_filter = ("excluded", "excluded_manually", "pilot")
