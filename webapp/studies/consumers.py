"""Live results: the researcher's results page refetches when votes arrive."""

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from webapp.security import ClosedOnLogout
from webapp.studies.models import Study


@database_sync_to_async
def visible_study(user, pk):
    if not user.is_authenticated:
        return None
    return Study.objects.visible_to(user).filter(pk=pk).first()


class StudyConsumer(ClosedOnLogout, AsyncJsonWebsocketConsumer):
    async def connect(self):
        self.study = await visible_study(self.scope["user"], self.scope["url_route"]["kwargs"]["pk"])
        if self.study is None:
            await self.close(code=4403)
            return
        await self.channel_layer.group_add(self.study.group, self.channel_name)
        await self.follow_session()
        await self.accept()

    async def disconnect(self, code):
        if getattr(self, "study", None) is not None:
            await self.channel_layer.group_discard(self.study.group, self.channel_name)
        await self.unfollow_session()

    async def vote_event(self, event):
        await self.send_json({"type": "vote"})
