"""The Microsoft Teams adapter on botbuilder 4.17.1's schema, routing, JWT rules and connector, with
our replacements for its broken seams. Only this package imports botbuilder or botframework."""
