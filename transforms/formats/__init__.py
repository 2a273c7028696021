"""Output formats of a document's mentions: DT4H CDM records and OMOP NOTE_NLP rows."""
