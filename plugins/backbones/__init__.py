"""plugins/backbones"""
