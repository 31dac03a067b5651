"""Users and teams. Roles are Django groups named in `apps.accounts.roles`."""

from __future__ import annotations

from django.contrib.auth.models import AbstractUser, Group
from django.db import models
from simple_history.models import HistoricalRecords


class User(AbstractUser):
    """A person who signs in to AIOS. What they may do comes from their roles and object permissions."""

    @property
    def display_name(self) -> str:
        return self.get_full_name() or self.username


class Team(models.Model):
    """A group of people who own workflows together. Membership is membership of `group`, so object
    permissions granted to the team's group (via django-guardian) reach every member."""

    name = models.CharField(max_length=100, unique=True)
    slug = models.SlugField(max_length=100, unique=True)
    group = models.OneToOneField(Group, on_delete=models.PROTECT, related_name="team")
    created_at = models.DateTimeField(auto_now_add=True)
    history = HistoricalRecords()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name
