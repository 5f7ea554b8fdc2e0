"""Apple devices report nothing by themselves: the service asks again on the inventory interval.

After TokenUpdate each device is asked every inventory query once; from then on this job queues the
queries again for devices whose last report is older than the check-in interval, in pages, skipping any
query still open for a device (so a device that sleeps for a week is asked once, not 42 times). The push
job then wakes the devices that have queries due.
"""

from datetime import timedelta

from sqlmodel import col, select

from mdm.channel.apple.models import AppleDevice
from mdm.channel.apple.service import queue_inventory_queries
from mdm.devices.models import MANAGED_STATES, Device
from mdm.ids import utcnow
from mdm.inventory.models import DeviceInventory
from mdm.scheduler import JobContext, JobSpec
from mdm.settings import Settings

PAGE = 500


def ask_for_inventory(context: JobContext, interval: timedelta) -> str:
    stale_before = utcnow() - interval
    after, queued, devices = "", 0, 0
    while True:
        with context.database.writing() as session:
            page = list(session.exec(_stale_devices(stale_before, after)))
            queued += queue_inventory_queries(session, page)
        if not page:
            break
        devices, after = devices + len(page), page[-1]
        context.still_running()
    return f"asked {devices} Apple device(s) for their inventory ({queued} queries queued)"


def _stale_devices(stale_before: object, after: str):  # type: ignore[no-untyped-def]
    """Managed Apple devices whose inventory was last reported before `stale_before`, or never."""
    return (
        select(Device.id)
        .join(AppleDevice, col(AppleDevice.device_id) == Device.id)
        .outerjoin(DeviceInventory, col(DeviceInventory.device_id) == Device.id)
        .where(
            col(Device.state).in_(MANAGED_STATES),
            col(AppleDevice.checked_out_at).is_(None),
            col(Device.id) > after,
            (col(DeviceInventory.reported_at).is_(None)) | (col(DeviceInventory.reported_at) < stale_before),
        )
        .order_by(Device.id)
        .limit(PAGE)
    )


def jobs(settings: Settings) -> list[JobSpec]:
    interval = timedelta(seconds=settings.checkin_interval_seconds)

    def work(context: JobContext) -> str:
        return ask_for_inventory(context, interval)

    return [JobSpec(name="apple-inventory", cron="*/15 * * * *", work=work)]
