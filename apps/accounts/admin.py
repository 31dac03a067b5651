from __future__ import annotations

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin
from simple_history.admin import SimpleHistoryAdmin

from apps.accounts.models import Team, User

admin.site.register(User, UserAdmin)


@admin.register(Team)
class TeamAdmin(SimpleHistoryAdmin):
    list_display = ["name", "slug", "created_at"]
    readonly_fields = ["group", "created_at"]
