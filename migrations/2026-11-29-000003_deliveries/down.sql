DROP TABLE attempts;
DROP TABLE deliveries;
