{{- define "strata.env" -}}
- name: STRATA_HOME
  value: /var/lib/strata
- name: STRATA_BIND_HOST
  value: "0.0.0.0"
- name: STRATA_KAFKA_BOOTSTRAP
  value: {{ .Values.kafka.bootstrap | quote }}
- name: STRATA_REPLICATION_FACTOR
  value: {{ .Values.kafka.replicationFactor | quote }}
- name: STRATA_STUDY_PARTITIONS
  value: {{ .Values.kafka.studyPartitions | quote }}
- name: STRATA_CLICKHOUSE_DSN
  value: {{ .Values.clickhouse.dsn | quote }}
- name: STRATA_CLICKHOUSE_DATABASE
  value: {{ .Values.clickhouse.database | quote }}
- name: STRATA_NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end -}}
