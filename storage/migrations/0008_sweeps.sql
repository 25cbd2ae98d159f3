-- Issue 9: the resolved-incident poll pages through the distinct incidents of ACTIVE grants, one
-- index seek per incident (every column it reads is in the index), instead of loading every active grant.
CREATE INDEX grants_active_by_incident ON grants (incident_id, flow, status) WHERE status = 'active' AND incident_id IS NOT NULL;

