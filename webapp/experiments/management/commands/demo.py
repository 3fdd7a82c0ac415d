"""``manage.py demo``: make sure a demo account exists and print how to log in.

The password is random on first creation and printed once; ``--reset`` makes a new one."""

import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "create the demo account (if missing) and print its credentials"

    def add_arguments(self, parser):
        parser.add_argument("--username", default="demo")
        parser.add_argument("--reset", action="store_true", help="give the account a new password")

    def handle(self, username, reset, **options):
        user, created = get_user_model().objects.get_or_create(username=username)
        if created or reset or not user.has_usable_password():
            password = secrets.token_urlsafe(9)
            user.set_password(password)
            user.save()
            self.stdout.write(f"demo account: username {username!r}, password {password!r}")
        else:
            self.stdout.write(
                f"demo account {username!r} exists (its password was printed when it was made; "
                f"`manage.py demo --reset` makes a new one)"
            )
