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


class ApiToken(models.Model):
    """A personal API token for the REST API and the MCP endpoint (`Authorization: Bearer <token>`).

    Only the SHA-256 of the token is kept (`digest`): a token is 32 random bytes, so an unsalted fast hash is
    enough (nothing to brute-force), and a read of the database gives no usable token. `prefix` (the token's first
    characters) is what pages show to tell tokens apart. A token stops working at `expires_at` or when revoked;
    revoked and expired rows stay, so the token page and the audit trail can still name them.
    """

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16)
    digest = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["user", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class ExternalIdentity(models.Model):
    """The single sign-on account (`issuer`, `subject`: the provider's `iss` and `sub` claims) a user signs in
    with. Matched on these, never on an email address or a name, which the provider's users may be able to
    change."""

    user = models.OneToOneField(User, on_delete=models.CASCADE, related_name="external_identity")
    issuer = models.CharField(max_length=255)
    subject = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)
    last_login_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["issuer", "subject"], name="accounts_identity_unique")]

    def __str__(self) -> str:
        return f"{self.subject} at {self.issuer}"
