"""jouletune.operator"""
