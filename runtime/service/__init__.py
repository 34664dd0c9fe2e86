"""The on-device forecasting service (`python -m runtime serve`): see service.py."""
