"""Webhooks: a job names a URL and the ends it wants announced; workers deliver them, signed (Standard Webhooks).

`targets` decides where a delivery may go (the URL's shape, the resolved address: SSRF); `dispatch` drains the
store's outbox, signs, sends, retries and records. The outbox itself and the signing secrets are in
`service/store/webhooks.py`.
"""
