"""jouletune.loadgen"""
