"""jouletune.gpu"""
