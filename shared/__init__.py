"""scarlet-fd shared package: the pure federated-distillation core and its adapters."""
