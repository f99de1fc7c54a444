"""jouletune.sim"""
