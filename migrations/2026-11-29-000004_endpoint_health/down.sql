ALTER TABLE endpoints DROP COLUMN failing_since, DROP COLUMN last_success_at;
