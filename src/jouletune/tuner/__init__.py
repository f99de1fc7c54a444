"""jouletune.tuner"""
