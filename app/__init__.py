"""refgate: end-to-end encrypted interagency referral exchange."""

__version__ = "0.1.0"
