"""Task modules used only by the tests (crashes, slow-but-healthy tasks, a real multi-thread stall)."""
