"""ccmkit's cloud emulator: a moto server with a seeded topology, fault injection and inspection."""
