DROP TRIGGER IF EXISTS deliveries_count_insert ON deliveries;
DROP TRIGGER IF EXISTS deliveries_count_update ON deliveries;
DROP TRIGGER IF EXISTS deliveries_count_delete ON deliveries;
DROP FUNCTION IF EXISTS herald_count_deliveries();
DROP TABLE IF EXISTS delivery_counts;
