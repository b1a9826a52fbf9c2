"""plugins/datasets"""
