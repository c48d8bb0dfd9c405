//! A raw HTTP/2 client for the attack tests: writes frames byte for byte (including ones a
//! well-behaved client never sends) and reads what the peer answers.
