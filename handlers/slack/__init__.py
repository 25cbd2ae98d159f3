"""The Slack adapter: bolt's ``AsyncApp`` mounted on Ackgate's aiohttp app, the inbound checks in
front of it, the notifier and the command inbox's answers. Only this package imports slack_bolt."""
