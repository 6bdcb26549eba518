import gc

from django.apps import AppConfig


class EventsourcingAppConfig(AppConfig):
    name = "eventsourcing_app"
    verbose_name = "Event store"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # metrics first: in multiprocess mode its values must be set up before any metric exists.
        from . import metrics
        from . import bootstrap, checks  # noqa: F401 - checks registers the system checks

        bootstrap.install()  # the composition root: store, Kafka, privacy, Celery wired together
        from django.conf import settings

        from .readside.projectors import PROJECTORS

        metrics.initialise(settings.EVENTSTORE["STREAM_TYPES"], PROJECTORS)

        from django.contrib.auth import get_user_model
        from django.db.models.signals import m2m_changed

        from django.contrib.auth.models import Group

        from django.db.models.signals import pre_delete, pre_save

        from .application import compliance

        # Who holds a compliance role, and what the roles hold, is written to the access log.
        m2m_changed.connect(compliance.on_group_change, sender=get_user_model().groups.through,
                            dispatch_uid="compliance-role-changes")
        m2m_changed.connect(compliance.on_group_permissions_change, sender=Group.permissions.through,
                            dispatch_uid="compliance-role-permission-changes")
        pre_save.connect(compliance.on_group_saving, sender=Group, dispatch_uid="compliance-role-renamed")
        pre_delete.connect(compliance.on_group_deleting, sender=Group, dispatch_uid="compliance-role-deleted")
        # What start-up made (Django, the app's modules, settings) lives as long as the process:
        # kept out of the cyclic collector's full passes, which otherwise walk those 100,000
        # objects (tens of milliseconds) in the middle of whatever request or append is running.
        gc.freeze()
