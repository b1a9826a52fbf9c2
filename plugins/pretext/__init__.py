"""plugins/pretext"""
