"""Checks of the deployment files under deploy/: manifests, images, dashboards, alerts."""
